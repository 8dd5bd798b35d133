"""Losses of DeepRS (eqs. 1-5 of the paper) and the VoxelMorph terms.

All return scalar tensors computed in float32; the reduction of each is in its docstring.
"""

from __future__ import annotations

from deeprs.losses.adversarial import adversarial_loss, discriminator_loss, reference_image
from deeprs.losses.dss import dss_scale, sample_dss_alpha
from deeprs.losses.segmentation import acm_loss, cross_entropy, drc_loss, soft_dice_loss
from deeprs.losses.similarity import folding_loss, local_ncc_loss, smoothness_loss
from deeprs.nets.spatial import one_hot

__all__ = [
    "acm_loss",
    "adversarial_loss",
    "cross_entropy",
    "discriminator_loss",
    "drc_loss",
    "dss_scale",
    "folding_loss",
    "local_ncc_loss",
    "one_hot",
    "reference_image",
    "sample_dss_alpha",
    "smoothness_loss",
    "soft_dice_loss",
]
