"""Preprocessing: heart crop, affine alignment to a reference, resampling and QC.

``crop`` finds heart boxes, ``affine`` wraps itk-elastix, ``resample`` builds the target
grid and scales intensities, ``qc`` measures overlap and draws the mosaic, and
``pipeline`` runs them over a cohort as ``deeprs preprocess``.
"""
