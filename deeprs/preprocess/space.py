"""The training grid in physical terms: orientation, spacing (mm) and shape.

A cohort's training grid covers the reference case's heart box. Its axes are the
reference scan's own voxel axes (after reorientation to LPS) reordered so that the
thickest one, the slice axis of an MRI stack, is z; ``target_shape`` is then always
``(in-plane, in-plane, through-plane)`` voxels over that box, whatever the scan's
orientation codes. An isotropic scan keeps its LPS order. Spacing is the box's extent over
the shape per axis. Every case is resampled onto this grid through its alignment, so the
grid means the same thing for every cohort and every case.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from deeprs.preprocess.crop import CropBox

log = logging.getLogger(__name__)

# An axis counts as the slice axis when it is this much thicker than every other axis.
SLICE_AXIS_RATIO = 1.5
# Warn when the target resamples a slice axis to a spacing this many times finer.
UPSAMPLING_WARNING_FACTOR = 2.0


@dataclass(frozen=True)
class TargetSpace:
    """A voxel grid: ``shape_xyz`` voxels of ``spacing_xyz`` mm along ``direction``'s columns."""

    origin_xyz: tuple[float, float, float]
    spacing_xyz: tuple[float, float, float]
    direction: tuple[float, ...]
    shape_xyz: tuple[int, int, int]

    def grid(self) -> sitk.Image:
        """An empty image with this geometry (the ``referenceImage`` of a resampling)."""
        grid = sitk.Image([int(v) for v in self.shape_xyz], sitk.sitkUInt8)
        grid.SetOrigin([float(v) for v in self.origin_xyz])
        grid.SetSpacing([float(v) for v in self.spacing_xyz])
        grid.SetDirection([float(v) for v in self.direction])
        return grid

    def to_json(self) -> dict[str, Any]:
        return {
            "origin_xyz": [round(float(v), 6) for v in self.origin_xyz],
            "spacing_xyz": [round(float(v), 6) for v in self.spacing_xyz],
            "direction": [round(float(v), 8) for v in self.direction],
            "shape_xyz": [int(v) for v in self.shape_xyz],
        }

    @classmethod
    def from_grid(cls, grid: sitk.Image) -> TargetSpace:
        return cls(
            tuple(float(v) for v in grid.GetOrigin()),  # type: ignore[arg-type]
            tuple(float(v) for v in grid.GetSpacing()),  # type: ignore[arg-type]
            tuple(float(v) for v in grid.GetDirection()),
            tuple(int(v) for v in grid.GetSize()),  # type: ignore[arg-type]
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetSpace:
        return cls(
            tuple(float(v) for v in data["origin_xyz"]),  # type: ignore[arg-type]
            tuple(float(v) for v in data["spacing_xyz"]),  # type: ignore[arg-type]
            tuple(float(v) for v in data["direction"]),
            tuple(int(v) for v in data["shape_xyz"]),  # type: ignore[arg-type]
        )


def slice_axis_last(spacing_xyz: Sequence[float]) -> tuple[int, int, int]:
    """Image axes in grid order: the thickest axis last when it is clearly the thickest."""
    spacing = np.asarray(spacing_xyz, dtype=float)
    thickest = int(np.argmax(spacing))
    others = [axis for axis in range(3) if axis != thickest]
    if spacing[thickest] < SLICE_AXIS_RATIO * spacing[others].max():
        return (0, 1, 2)
    return (others[0], others[1], thickest)


def target_space(image: sitk.Image, box: CropBox, shape_xyz: Sequence[int]) -> TargetSpace:
    """The grid tiling ``box`` of ``image`` with ``shape_xyz`` voxels, slice axis on z.

    The box's outer edges are kept: the first voxel centre sits half an output voxel
    inside them.
    """
    order = slice_axis_last(image.GetSpacing())
    shape = np.asarray(shape_xyz, dtype=int)
    size = np.asarray(box.size)[list(order)]
    start = np.asarray(box.start)[list(order)]
    spacing = size * np.asarray(image.GetSpacing())[list(order)] / shape
    first_centre_grid = start - 0.5 + 0.5 * size / shape
    first_centre = np.empty(3)
    first_centre[list(order)] = first_centre_grid
    columns = np.reshape(image.GetDirection(), (3, 3))[:, list(order)]
    origin = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in first_centre])
    return TargetSpace(
        tuple(float(v) for v in origin),  # type: ignore[arg-type]
        tuple(float(v) for v in spacing),  # type: ignore[arg-type]
        tuple(float(v) for v in columns.ravel()),
        tuple(int(v) for v in shape),  # type: ignore[arg-type]
    )


def slice_axis_warning(
    space: TargetSpace, spacing_xyz: Sequence[float], direction: Sequence[float], name: str
) -> str | None:
    """One line when a scan's slice axis would be resampled much finer than it was acquired.

    Looks up the grid axis nearest to the scan's thickest axis (in physical space); names
    it, both spacings and the ``target_shape`` entry that would keep the data's spacing.
    """
    spacing = np.asarray(spacing_xyz, dtype=float)
    if slice_axis_last(spacing) == (0, 1, 2) and spacing[2] < SLICE_AXIS_RATIO * spacing[:2].max():
        return None
    thick = int(np.argmax(spacing))
    thick_direction = np.reshape(direction, (3, 3))[:, thick]
    grid_axes = np.reshape(space.direction, (3, 3))
    nearest = int(np.argmax(np.abs(grid_axes.T @ thick_direction)))
    target = space.spacing_xyz[nearest]
    if spacing[thick] < UPSAMPLING_WARNING_FACTOR * target:
        return None
    axis = "xyz"[nearest]
    extent = space.shape_xyz[nearest] * target
    keep = max(1, int(round(extent / spacing[thick])))
    return (
        f"{name}: its {spacing[thick]:.1f} mm slice axis lands on the target's {axis} axis "
        f"at {target:.2f} mm ({spacing[thick] / target:.1f}x finer than acquired); "
        f"target_shape[{nearest}] = {keep} would keep the acquired spacing"
    )


def turned_slice_axis(
    space: TargetSpace, spacing_xyz: Sequence[float], direction: Sequence[float]
) -> str | None:
    """The grid axis ("x" or "y") that a stack's slice axis lands on when the grid has its
    own slice axis on z and the stack was turned on its side by its alignment; else None.

    A short stack of thick slices turned on its side is anatomically wrong whatever its
    similarity (ACDC: quarter turns scored a higher similarity than the upright stack for
    13 of 18 cases without a plausible affine, at Dice 0.05-0.27 to the reference).
    """
    spacing = np.asarray(spacing_xyz, dtype=float)
    grid_spacing = np.asarray(space.spacing_xyz, dtype=float)
    if slice_axis_last(spacing) == (0, 1, 2) and spacing[2] < SLICE_AXIS_RATIO * spacing[:2].max():
        return None
    if grid_spacing[2] < SLICE_AXIS_RATIO * grid_spacing[:2].max():
        return None
    thick = np.reshape(direction, (3, 3))[:, int(np.argmax(spacing))]
    nearest = int(np.argmax(np.abs(np.reshape(space.direction, (3, 3)).T @ thick)))
    return None if nearest == 2 else "xyz"[nearest]
