"""Preprocessing: heart crop, alignment to a reference, resampling onto one physical grid, QC.

``settings`` types the config; ``space`` defines the training grid physically (slice axis
on z); ``crop`` finds heart boxes; ``affine`` wraps itk-elastix and ``align`` runs it from
several starts with plausibility checks; ``reference`` builds the reference and its grid;
``case`` processes one case; ``qc`` and ``qc_mosaic`` write ``qc.csv`` and ``mosaic.png``;
``outputs`` writes files; ``plan`` records and applies what a new image needs; ``cohort``
runs it all over a cohort and ``cli`` is ``deeprs preprocess``.
"""
