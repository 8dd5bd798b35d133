"""The output grid, resampling onto it, and intensity scaling to [0, 1].

The output grid covers a crop box of one image with ``target_shape`` voxels (x, y, z): the
box's outer edges are kept, so the spacing is the box's extent divided by the shape and
differs per axis. Cases are resampled from their full (uncropped) image, through the
affine transform when given, so that voxels near the border come from real anatomy rather
than from padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from deeprs.errors import DataError
from deeprs.preprocess.crop import CropBox


def box_grid(image: sitk.Image, box: CropBox, target_shape_xyz: Sequence[int]) -> sitk.Image:
    """An empty image whose ``target_shape`` voxels tile ``box`` of ``image`` exactly."""
    shape = np.asarray(target_shape_xyz, dtype=int)
    spacing = np.asarray(box.size) * np.asarray(image.GetSpacing()) / shape
    # The first output voxel centre sits half an output voxel inside the box's outer edge.
    first_centre = np.asarray(box.start) - 0.5 + 0.5 * np.asarray(box.size) / shape
    grid = sitk.Image([int(v) for v in shape], sitk.sitkUInt8)
    grid.SetSpacing([float(v) for v in spacing])
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in first_centre]))
    return grid


def box_grid_at_spacing(
    image: sitk.Image, box: CropBox, spacing_xyz: Sequence[float]
) -> sitk.Image:
    """A grid over ``box`` of ``image`` whose voxels are about ``spacing_xyz`` (never finer than the image)."""
    spacing = np.maximum(np.asarray(spacing_xyz, dtype=float), image.GetSpacing())
    extent = np.asarray(box.size) * np.asarray(image.GetSpacing())
    return box_grid(image, box, np.maximum(np.round(extent / spacing), 2).astype(int))


def resample_onto(
    image: sitk.Image,
    grid: sitk.Image,
    transform: sitk.Transform | None = None,
    *,
    is_label: bool = False,
) -> sitk.Image:
    """``image`` sampled at ``grid``'s voxels (mapped through ``transform`` if given).

    Images are interpolated linearly and filled with their minimum outside the field of
    view (air in CT, background in MRI); labels use nearest neighbour and fill with 0.
    """
    if is_label:
        interpolator, fill, pixel = sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8
    else:
        interpolator, pixel = sitk.sitkLinear, sitk.sitkFloat32
        fill = float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(
        image,
        grid,
        transform if transform is not None else sitk.Transform(),
        interpolator,
        fill,
        pixel,
    )


def scale_intensities(
    array: np.ndarray,
    modality: str,
    ct_window: Sequence[float],
    mri_percentiles: Sequence[float],
    case_id: str = "",
) -> np.ndarray:
    """float32 intensities in [0, 1]: a fixed HU window for CT, per-case percentiles for MRI."""
    if modality == "ct":
        low, high = float(ct_window[0]), float(ct_window[1])
        if high <= low:
            raise DataError(
                f"config key 'preprocess.ct_window': {list(ct_window)} must be [low, high] with low < high"
            )
    else:
        low, high = (float(v) for v in np.percentile(array, list(mri_percentiles)))
        if high <= low:
            raise DataError(
                f"case '{case_id}' has constant intensity inside its heart box "
                f"(percentiles {list(mri_percentiles)} both {low}); check the image"
            )
    return np.clip((array.astype(np.float32) - low) / (high - low), 0.0, 1.0).astype(np.float32)
