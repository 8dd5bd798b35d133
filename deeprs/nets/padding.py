"""Padding volumes to the multiple the networks need, and cropping predictions back.

Shared by training, evaluation and prediction so that every caller feeds the networks the
same border: images are padded with their edge values (the spatial transformer's border
rule), label maps with background.
"""

from __future__ import annotations

import numpy as np
import torch

NETWORK_MULTIPLE = 16
"""Every spatial size is padded to a multiple of this: the nets halve the grid four times."""


def padded_shape(shape: tuple[int, ...], multiple: int = NETWORK_MULTIPLE) -> tuple[int, ...]:
    return tuple(-(-size // multiple) * multiple for size in shape)


def pad_to_multiple(
    volume: np.ndarray, multiple: int = NETWORK_MULTIPLE, mode: str = "edge"
) -> np.ndarray:
    """Pad a ``(z, y, x)`` array at the far end of each axis up to a multiple of ``multiple``.

    Images use ``edge`` (the same border rule as the spatial transformer); label maps use
    ``constant`` (background). ``crop_to_shape`` undoes it.
    """
    target = padded_shape(volume.shape, multiple)
    widths = [(0, t - s) for s, t in zip(volume.shape, target, strict=True)]
    if not any(after for _, after in widths):
        return np.asarray(volume)
    return np.pad(volume, widths, mode=mode)


def crop_to_shape(tensor: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on the last three axes of a tensor."""
    depth, height, width = shape
    return tensor[..., :depth, :height, :width]
