"""Forward passes on the training grid, shared by evaluation, overlays, predict and register.

Inputs are ``(N, 1, D, H, W)`` tensors already padded by :func:`volume_tensor` (images
with their edge, labels with background, as in training); outputs stay padded so callers
warp on the same grid the networks saw and crop with ``crop_to_shape`` at the end. Every
pass runs without gradients under :func:`deeprs.device.autocast`, the mixed precision of
training, so a figure, a score and a prediction come from the same numbers; and
:func:`use_training_layout` gives the networks the memory layout training gives them, the
fast path of :mod:`deeprs.perf`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from deeprs import perf
from deeprs.device import autocast
from deeprs.nets.padding import NETWORK_MULTIPLE, pad_to_multiple
from deeprs.nets.spatial import warp


def volume_tensor(
    volume: np.ndarray,
    device: torch.device,
    multiple: int = NETWORK_MULTIPLE,
    label: bool = False,
) -> torch.Tensor:
    """``(1, 1, D, H, W)`` on ``device``: float32 images padded with their edge, int64 labels with 0."""
    padded = pad_to_multiple(np.asarray(volume), multiple, mode="constant" if label else "edge")
    # A copy: the arrays are often read-only memory maps of the preprocessed files.
    tensor = torch.tensor(padded, dtype=torch.int64 if label else torch.float32, device=device)
    return tensor[None, None]


def use_training_layout(networks: Iterable[nn.Module | None], shape_zyx: Sequence[int]) -> None:
    """The memory layout the trainer gives each network for volumes of ``shape_zyx`` (the
    padded grid): the same fast path as training and its validation."""
    weighted = [net for net in networks if net is not None and any(True for _ in net.parameters())]
    if weighted:
        device = next(weighted[0].parameters()).device
        perf.prepare_networks(weighted, perf.default_options(device), tuple(shape_zyx))


@torch.no_grad()
def segmentation_probabilities(
    network: nn.Module, images: torch.Tensor, cpu_bf16: bool = False
) -> torch.Tensor:
    """Class probabilities ``(N, C, D, H, W)`` in float32 (softmax of the logits)."""
    with autocast(images.device, cpu_bf16):
        logits = network(images)
    return torch.softmax(logits.float(), dim=1)


@torch.no_grad()
def displacements(
    network: nn.Module | None,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    cpu_bf16: bool = False,
) -> torch.Tensor:
    """Displacements ``(N, 3, D, H, W)`` in voxels, channels ``(d, h, w)``, float32.

    ``network`` None is the identity (zero displacement): the cases are already affinely
    aligned, which is what "Affine only" scores.
    """
    if network is None:
        return torch.zeros((moving.shape[0], 3, *moving.shape[2:]), device=moving.device)
    with autocast(moving.device, cpu_bf16):
        field = network(moving, fixed)
    return field.float()


@torch.no_grad()
def warp_image(image: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """``image`` pulled through ``displacement`` (trilinear)."""
    return warp(image, displacement, mode="bilinear")


@torch.no_grad()
def warp_label(label: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """An integer label map pulled through ``displacement`` (nearest neighbour)."""
    return warp(label, displacement, mode="nearest")
