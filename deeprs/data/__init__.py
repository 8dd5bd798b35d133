"""Input cohorts and the contract between steps: the manifest and split files
(:mod:`deeprs.data.cases`), reading a user's cohort (:mod:`deeprs.data.ingest`), voxel
grids (:mod:`deeprs.data.geometry`) and the cohort mosaic (:mod:`deeprs.data.mosaic`).
The synthetic cohort is :mod:`deeprs.phantom`.
"""
