"""The synthetic cardiac CT cohort (``deeprs phantom``), separate from the manifest contract
of :mod:`deeprs.data` that every step reads.

- :mod:`deeprs.phantom.shapes`: implicit shapes (ellipsoids, tubes, boxes) as distance-like fields.
- :mod:`deeprs.phantom.subject`: what is random about one case, drawn from its own generator.
- :mod:`deeprs.phantom.painting`: painting parts into tissue and label maps in priority order.
- :mod:`deeprs.phantom.chest`: chest wall, lungs and vessels, diaphragm, bones, airways.
- :mod:`deeprs.phantom.heart`: the seven MM-WHS structures and the great vessels.
- :mod:`deeprs.phantom.render`: one case as HU image, label and tissue map.
- :mod:`deeprs.phantom.naming`: the MM-WHS case names.
- :mod:`deeprs.phantom.cohort`: the whole cohort in the MM-WHS layout, with its mosaic.
- :mod:`deeprs.phantom.cli`: the ``deeprs phantom`` command.

The voxel grid (:mod:`deeprs.data.geometry`) and the cohort mosaic
(:mod:`deeprs.data.mosaic`) stay in :mod:`deeprs.data`: real cohorts use them too.
"""
