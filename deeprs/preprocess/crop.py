"""Boxes around the heart, in voxel indices of one image and in physical space (mm).

A labelled case's box is the bounding box of all its structures plus a margin in mm. An
unlabelled case gets a box carried from a labelled reference through an affine transform
(see :mod:`deeprs.preprocess.affine`): the reference box's eight corners are mapped into
the case and the box enclosing them is taken, so no label of the case is used.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from deeprs.errors import DataError


@dataclass(frozen=True)
class CropBox:
    """A voxel box ``[start, start + size)`` per axis (x, y, z) of one image's grid."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]

    @property
    def stop(self) -> tuple[int, int, int]:
        return tuple(int(a + b) for a, b in zip(self.start, self.size, strict=True))  # type: ignore[return-value]

    def contains_index(self, index_xyz: np.ndarray) -> np.ndarray:
        """Whether each row of an ``(n, 3)`` array of voxel indices lies inside the box."""
        index_xyz = np.asarray(index_xyz)
        return np.all((index_xyz >= self.start) & (index_xyz < self.stop), axis=1)

    def to_json(self, image: sitk.Image) -> dict[str, Any]:
        """Index box and its physical corners (outer voxel edges, mm) for ``crop_boxes.json``."""
        corners = box_corners(image, self)
        return {
            "start_xyz": list(self.start),
            "size_xyz": list(self.size),
            "physical_min_xyz": [round(float(v), 3) for v in corners.min(axis=0)],
            "physical_max_xyz": [round(float(v), 3) for v in corners.max(axis=0)],
        }


def _clip_box(low: np.ndarray, high: np.ndarray, image: sitk.Image) -> CropBox:
    """The box of voxel indices ``low..high`` (inclusive), clipped to the image."""
    size = np.asarray(image.GetSize())
    low = np.clip(np.floor(low).astype(int), 0, size - 1)
    high = np.clip(np.ceil(high).astype(int), 0, size - 1)
    if np.any(high < low):
        raise DataError("the crop box lies outside the image")
    return CropBox(
        start=tuple(int(v) for v in low),  # type: ignore[arg-type]
        size=tuple(int(v) for v in high - low + 1),  # type: ignore[arg-type]
    )


def label_box(label: sitk.Image, margin_mm: float, case_id: str = "") -> CropBox:
    """Bounding box of every non-zero voxel, widened by ``margin_mm`` on each side."""
    classes = sitk.GetArrayViewFromImage(label)
    nonzero = np.nonzero(classes)
    if nonzero[0].size == 0:
        raise DataError(
            f"the label of case '{case_id}' is empty, so it has no heart to crop; "
            "remove its label file or fix it"
        )
    low_zyx = np.array([axis.min() for axis in nonzero])
    high_zyx = np.array([axis.max() for axis in nonzero])
    margin = np.ceil(margin_mm / np.asarray(label.GetSpacing()))
    return _clip_box(low_zyx[::-1] - margin, high_zyx[::-1] + margin, label)


def box_corners(image: sitk.Image, box: CropBox) -> np.ndarray:
    """The eight physical corners ``(8, 3)`` of the box's outer voxel edges, in mm."""
    low = np.asarray(box.start) - 0.5
    high = np.asarray(box.stop) - 0.5
    corners = []
    for choice in itertools.product((0, 1), repeat=3):
        index = [high[axis] if pick else low[axis] for axis, pick in enumerate(choice)]
        corners.append(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]))
    return np.asarray(corners)


def enclosing_box(image: sitk.Image, points: np.ndarray) -> CropBox:
    """The smallest box of ``image`` voxels covering the physical points (clipped to it)."""
    indices = np.array(
        [image.TransformPhysicalPointToContinuousIndex([float(v) for v in p]) for p in points]
    )
    # Outer edges sit half a voxel beyond centres: round inward so the box is not one too wide.
    return _clip_box(indices.min(axis=0) + 0.5, indices.max(axis=0) - 0.5, image)


def clip_box(image: sitk.Image, box: CropBox) -> CropBox:
    """The part of ``box`` inside ``image``."""
    return _clip_box(np.asarray(box.start), np.asarray(box.stop) - 1, image)


def crop(image: sitk.Image, box: CropBox) -> sitk.Image:
    """The sub-volume inside ``box``, keeping its physical position (origin moves)."""
    return sitk.RegionOfInterest(image, list(box.size), list(box.start))
