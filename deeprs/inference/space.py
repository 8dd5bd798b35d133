"""From a new image's own grid to the training grid and back.

Forward, the preprocessing step's own functions run on the image: heart box (carried from
the reference, or by the labelled-case rule from a label map of the image such as a first
prediction), affine onto the reference's heart (:func:`deeprs.preprocess.case.align_case`),
resampling onto the target grid and intensity scaling. Backward, class probabilities on the
grid are resampled (linearly) through the inverse affine onto the image's own grid, only
inside the region the grid covers; everything outside it is background.

All geometry is physical (mm): images of any orientation, spacing or axis order are read
in their canonical (LPS) form for alignment, and outputs go onto the grid of the file as
given, so a flipped or permuted copy of a scan gets the same segmentation in space.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from deeprs.data.ingest import Case, canonical, read_volume
from deeprs.errors import DataError
from deeprs.preprocess.affine import AffineRegistrar
from deeprs.preprocess.case import align_case
from deeprs.preprocess.crop import CropBox, box_corners, enclosing_box
from deeprs.preprocess.plan import AlignmentTarget, alignment_target
from deeprs.preprocess.resample import resample_onto, scale_intensities

AIR_HU = -500.0
"""CT scans of the chest always show lung and air far below this (HU)."""
AIR_FRACTION = 0.01


@dataclass
class AlignedImage:
    """A new image on the training grid.

    ``native`` is the file as read (its own orientation), ``affine`` maps grid points to
    the image's points, ``array`` is the scaled ``(z, y, x)`` float32 grid image in [0, 1];
    ``box`` is the heart box it was aligned from (voxels of the canonical image) and
    ``box_source`` where that box came from (``label`` or ``carried from <reference>``).
    """

    path: Path
    native: sitk.Image
    affine: sitk.AffineTransform
    array: np.ndarray
    target: AlignmentTarget
    box: CropBox
    box_source: str


def check_intensities(image: sitk.Image, modality: str, path: Path) -> None:
    """Refuse an image whose intensities cannot be the modality the model was trained on."""
    values = sitk.GetArrayViewFromImage(image)
    if float(values.min()) == float(values.max()):
        raise DataError(f"'{path}' has one intensity everywhere; give a scan, not a mask or blank")
    below_air = float(np.mean(values < AIR_HU))
    if modality == "ct" and below_air < AIR_FRACTION:
        raise DataError(
            f"'{path}' does not look like CT in Hounsfield units (intensities "
            f"{float(values.min()):.4g}..{float(values.max()):.4g}, almost no air below "
            f"{AIR_HU:.0f}); this model was trained on CT: give the unscaled CT scan"
        )
    if modality == "mri" and below_air >= AIR_FRACTION:
        raise DataError(
            f"'{path}' looks like CT in Hounsfield units ({100 * below_air:.0f}% of voxels "
            f"below {AIR_HU:.0f}) but this model was trained on MRI; give an MR image"
        )


def check_image(path: str | Path, modality: str) -> sitk.Image:
    """Read one new image and refuse it (one line) unless it is a 3D scan of ``modality``."""
    image = read_volume(path)
    check_intensities(image, modality, Path(path))
    return image


class Aligner:
    """Aligns new images to one plan's reference; makes one elastix registrar per process."""

    def __init__(self, plan: dict[str, Any], threads: int = 1) -> None:
        self.plan = plan
        self.target = alignment_target(plan)
        self.threads = threads
        self._registrar: AffineRegistrar | None = None

    @property
    def registrar(self) -> AffineRegistrar:
        if self._registrar is None:  # creating the first one costs 15-25 s
            self._registrar = AffineRegistrar(threads=self.threads)
        return self._registrar

    def align(self, path: str | Path) -> AlignedImage:
        """The image with its heart box carried from the reference (it has no label)."""
        path = Path(path)
        return self.align_image(path, check_image(path, self.plan["modality"]))

    def align_image(
        self, path: Path, native: sitk.Image, heart_label: sitk.Image | None = None
    ) -> AlignedImage:
        """``native`` aligned from the box of ``heart_label`` (a label map on its grid, any
        non-zero voxel is heart) by the plan's crop rule, as preprocessing crops a labelled
        case; without it, from the box carried from the reference."""
        label = None if heart_label is None else canonical(heart_label)
        case = Case(path.name, path.name, canonical(sitk.Cast(native, sitk.sitkFloat32)), label)
        alignment = align_case(case, self.target, self.registrar, self.plan["crop_margin_mm"])
        on_grid = resample_onto(case.image, self.target.grid, alignment.affine)
        array = scale_intensities(
            sitk.GetArrayFromImage(on_grid),
            self.plan["modality"],
            self.plan["ct_window"],
            self.plan["mri_percentiles"],
            path.name,
        )
        return AlignedImage(
            path, native, alignment.affine, array, self.target, alignment.box, alignment.source
        )


def covered_box(native: sitk.Image, grid: sitk.Image, affine: sitk.Transform) -> CropBox:
    """The box of ``native``'s voxels that the grid, mapped through ``affine``, can reach."""
    full = CropBox((0, 0, 0), tuple(grid.GetSize()))  # type: ignore[arg-type]
    corners = box_corners(grid, full)
    mapped = np.array([affine.TransformPoint([float(v) for v in c]) for c in corners])
    return enclosing_box(native, mapped)


def grid_image(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.CopyInformation(grid)
    return image


@dataclass
class NativeProbabilities:
    """Class probabilities on the native grid inside ``box`` (``(C, z, y, x)``), 0 = background."""

    box: CropBox
    values: np.ndarray


def probabilities_to_native(
    probabilities: np.ndarray, grid: sitk.Image, native: sitk.Image, affine: sitk.Transform
) -> NativeProbabilities:
    """Grid probabilities ``(C, z, y, x)`` resampled onto ``native``'s grid, inside the
    covered box; ``affine`` maps ``grid``'s points to ``native``'s. Used by prediction
    (:class:`AlignedImage`'s fields) and by evaluation (a test case's recorded affine).

    Foreground classes are interpolated linearly (0 outside the grid); background is what
    they leave, so every voxel's probabilities still sum to one.
    """
    box = covered_box(native, grid, affine)
    region = sitk.Image([int(v) for v in box.size], sitk.sitkUInt8)
    region.SetSpacing(native.GetSpacing())
    region.SetDirection(native.GetDirection())
    region.SetOrigin(native.TransformIndexToPhysicalPoint([int(v) for v in box.start]))
    inverse = affine.GetInverse()
    foreground = [
        sitk.GetArrayFromImage(
            sitk.Resample(
                grid_image(channel, grid), region, inverse, sitk.sitkLinear, 0.0, sitk.sitkFloat32
            )
        )
        for channel in probabilities[1:]
    ]
    background = np.clip(1.0 - np.sum(foreground, axis=0), 0.0, 1.0)
    return NativeProbabilities(box, np.stack([background, *foreground]).astype(np.float32))


def native_label_map(
    native: sitk.Image, probabilities: NativeProbabilities, values: list[int]
) -> sitk.Image:
    """The argmax on the whole native grid, written with the cohort's label ``values``."""
    classes = np.argmax(probabilities.values, axis=0)
    lookup = np.asarray([0, *values])
    dtype = np.uint8 if lookup.max() < 256 else np.uint16
    full = np.zeros(sitk.GetArrayViewFromImage(native).shape, dtype=dtype)
    (x0, y0, z0), (x1, y1, z1) = probabilities.box.start, probabilities.box.stop
    full[z0:z1, y0:y1, x0:x1] = lookup[classes]
    label = sitk.GetImageFromArray(full)
    label.CopyInformation(native)
    return label


def native_probability_map(native: sitk.Image, probabilities: NativeProbabilities) -> sitk.Image:
    """A multi-component float32 image on the native grid: one component per class."""
    channels, shape = probabilities.values.shape[0], sitk.GetArrayViewFromImage(native).shape
    full = np.zeros((*shape, channels), dtype=np.float32)
    full[..., 0] = 1.0
    (x0, y0, z0), (x1, y1, z1) = probabilities.box.start, probabilities.box.stop
    full[z0:z1, y0:y1, x0:x1] = np.moveaxis(probabilities.values, 0, -1)
    image = sitk.GetImageFromArray(full, isVector=True)
    image.CopyInformation(native)
    return image
