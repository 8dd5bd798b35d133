"""Manual augmentation of "3D U-Net-aug": random rotation, mirroring and flipping.

The paper names the three operations only; our reading (also in ``docs/methods.md``):
a rotation about each of the three axes by an angle drawn uniformly from [-10, 10]
degrees, applied in millimetres (so anisotropic voxels are not sheared) about the volume
centre. *Mirroring* reverses the left-right (x) axis and *flipping* the anterior-posterior
(y) axis. Images are resampled trilinearly, labels with nearest neighbour, both with
border padding like the spatial transformer.

A heart is chiral: one reflection alone turns it into its mirror image (the left
ventricle on the right, the aorta where the pulmonary artery was), a heart that no test
image contains. Drawn independently with probability 1/2 each (``"independent"``, the
literal reading), half the samples are such mirrored hearts and a quarter are turned by
180 degrees (both reflections, see below). Mirroring and flipping applied *together*
(``"paired"``, probability 1/2) make a 180 degree rotation about the cranio-caudal axis:
a real heart, but in a pose (as if the patient lay prone) that no test image shows
either. On the demo's fold 0 both slow S down by some 30 Dice points (diagnostic Dice
after 200 iterations 54.4 and 56.6 against 85.7 for rotation alone; after 400, 80.8 for
``"paired"`` against 89.7), so the default is ``"none"``: rotation alone. ``"paired"`` is the choice for
a cohort scanned in both poses. Measurements in ``docs/results.md``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_ROTATION_DEGREES = 10.0
REFLECTIONS = ("none", "paired", "independent")
"""How mirroring (x) and flipping (y) are drawn; the first is the default (see above)."""


def _axis_rotation(axis: int, angle: float) -> torch.Tensor:
    """3x3 rotation about ``axis`` (0 = x, 1 = y, 2 = z) in (x, y, z) coordinates."""
    cosine, sine = math.cos(angle), math.sin(angle)
    first, second = [a for a in range(3) if a != axis]
    matrix = torch.eye(3, dtype=torch.float64)
    matrix[first, first] = cosine
    matrix[first, second] = -sine
    matrix[second, first] = sine
    matrix[second, second] = cosine
    return matrix


def rotation_theta(
    angles_xyz: tuple[float, float, float],
    shape_zyx: tuple[int, int, int],
    spacing_zyx: tuple[float, float, float],
) -> torch.Tensor:
    """The ``affine_grid`` matrix ``(1, 3, 4)`` of a rotation about the volume centre in mm.

    ``affine_grid`` works in coordinates normalised to [-1, 1] (``align_corners=True``) in
    (x, y, z) order; a rotation in millimetres becomes ``H^-1 R H`` there, where ``H``
    holds each axis' half extent in mm.
    """
    rotation = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(angles_xyz):
        rotation = _axis_rotation(axis, angle) @ rotation
    half_extent_xyz = torch.tensor(
        [(size - 1) / 2 * spacing for size, spacing in zip(shape_zyx, spacing_zyx, strict=True)][
            ::-1
        ],
        dtype=torch.float64,
    ).clamp_min(1e-6)
    normalised = torch.diag(1 / half_extent_xyz) @ rotation @ torch.diag(half_extent_xyz)
    theta = torch.zeros(1, 3, 4, dtype=torch.float64)
    theta[0, :, :3] = normalised
    return theta


def rotate(volume: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample ``(N, C, D, H, W)`` through ``theta``; integer volumes stay integer."""
    integer_input = not torch.is_floating_point(volume)
    source = volume.to(torch.float32) if integer_input else volume
    grid = F.affine_grid(
        theta.to(device=volume.device, dtype=source.dtype).expand(volume.shape[0], 3, 4),
        list(volume.shape),
        align_corners=True,
    )
    rotated = F.grid_sample(source, grid, mode=mode, padding_mode="border", align_corners=True)
    return rotated.round().to(volume.dtype) if integer_input else rotated


def augment_pair(
    image: torch.Tensor,
    label: torch.Tensor,
    generator: torch.Generator,
    spacing_zyx: tuple[float, float, float],
    reflections: str = REFLECTIONS[0],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random rotation/mirroring/flipping applied identically to image and label.

    ``generator`` (a CPU ``torch.Generator``) makes the draw reproducible; every mode takes
    the same five draws, so the data order does not depend on it.
    """
    if reflections not in REFLECTIONS:
        raise ValueError(f"reflections must be one of {REFLECTIONS}, got {reflections!r}")
    draws = torch.rand(5, generator=generator, dtype=torch.float64)
    limit = math.radians(MAX_ROTATION_DEGREES)
    angles = tuple(float((2 * draw - 1) * limit) for draw in draws[:3])
    theta = rotation_theta(angles, tuple(image.shape[2:]), spacing_zyx)  # type: ignore[arg-type]
    image = rotate(image, theta, mode="bilinear")
    label = rotate(label, theta, mode="nearest")
    flip_axes = reflection_axes(reflections, float(draws[3]), float(draws[4]))
    if flip_axes:
        image = image.flip(flip_axes)
        label = label.flip(flip_axes)
    return image, label


def reflection_axes(reflections: str, mirror_draw: float, flip_draw: float) -> list[int]:
    """Tensor axes to reverse: x (4) for mirroring, y (3) for flipping; never one alone
    unless ``reflections`` is ``"independent"``."""
    if reflections == "none":
        return []
    if reflections == "paired":
        return [4, 3] if mirror_draw < 0.5 else []
    return [axis for axis, draw in ((4, mirror_draw), (3, flip_draw)) if draw < 0.5]
