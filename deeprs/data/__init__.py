"""Input cohorts: the synthetic cardiac CT phantom (``deeprs phantom``) and its parts.

- :mod:`deeprs.data.geometry`: the voxel grid in physical millimetres and affine maps.
- :mod:`deeprs.data.shapes`: implicit shapes (ellipsoids, tubes) as signed-distance-like fields.
- :mod:`deeprs.data.anatomy`: one subject's chest CT drawn from a seeded generator.
- :mod:`deeprs.data.mosaic`: the PNG overview of a few generated cases.
- :mod:`deeprs.data.phantom`: the command that writes the MM-WHS-style cohort.
"""
