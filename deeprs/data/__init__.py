"""Input cohorts: reading them and generating the synthetic one.

The synthetic cardiac CT phantom (``deeprs phantom``) is built from these modules:

- :mod:`deeprs.data.geometry`: the voxel grid in physical millimetres and affine maps.
- :mod:`deeprs.data.shapes`: implicit shapes (ellipsoids, tubes, boxes) as distance-like fields.
- :mod:`deeprs.data.subject`: what is random about one case, drawn from its own generator.
- :mod:`deeprs.data.painting`: painting parts into tissue and label maps in priority order.
- :mod:`deeprs.data.chest`: chest wall, lungs and vessels, diaphragm, bones, airways.
- :mod:`deeprs.data.heart`: the seven MM-WHS structures and the great vessels.
- :mod:`deeprs.data.render`: one case as HU image, label and tissue map.
- :mod:`deeprs.data.mosaic`: the PNG overview of a few cases.
- :mod:`deeprs.data.phantom`: the command that writes the MM-WHS-style cohort.
"""
