"""``deeprs register``: a moving image (and label) onto a fixed image's grid, with its transform.

Both images are aligned to the bundle's reference as in preprocessing (affines ``T_m`` and
``T_f``, each mapping training-grid points to the image's points), R predicts the
displacement ``u`` between them on the grid, and the whole mapping from a fixed point ``p``
to the moving point it takes its value from is

    Phi(p) = A(p + d(p)),  A = T_m o T_f^-1,  d(p) = L_f u_mm(T_f^-1(p))

where ``L_f`` is the linear part of ``T_f`` and ``u_mm`` the displacement in mm on the
grid. ``A`` is written as an ITK transform file and ``d`` as a displacement-field image in
mm in ITK's LPS physical space, on a box of the fixed image's space that covers the grid
(zero outside, as ITK reads it). So with SimpleITK::

    affine = sitk.ReadTransform("affine.tfm")
    field = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage("displacement.nii.gz"), sitk.sitkVectorFloat64))
    moved = sitk.Resample(moving, fixed, sitk.CompositeTransform([affine, field]), sitk.sitkLinear)

gives the moved image (a composite applies its last transform first). The moved image
and label written here are made exactly that way.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from deeprs.data.ingest import check_same_grid, read_volume
from deeprs.device import add_runtime_arguments, select_device, set_threads
from deeprs.errors import DataError
from deeprs.inference.bundle import Bundle, load_bundle
from deeprs.inference.networks import displacements, volume_tensor
from deeprs.inference.predict import image_suffix
from deeprs.inference.space import AlignedImage, Aligner, check_image, covered_box
from deeprs.io import atomic_path
from deeprs.methods import get_method
from deeprs.nets.padding import crop_to_shape

LOG = logging.getLogger(__name__)

AFFINE_FILE = "affine.tfm"
FIELD_FILE = "displacement.nii.gz"


@dataclass
class Registration:
    """``affine`` and ``field`` (vector float64, mm) compose as in the module docstring."""

    moved: sitk.Image
    moved_label: sitk.Image | None
    affine: sitk.AffineTransform
    field: sitk.Image


def matrix_and_offset(transform: sitk.AffineTransform) -> tuple[np.ndarray, np.ndarray]:
    """``T(x) = M x + b`` of an ITK affine ``A (x - c) + c + t``."""
    matrix = np.asarray(transform.GetMatrix(), dtype=float).reshape(3, 3)
    centre = np.asarray(transform.GetCenter(), dtype=float)
    offset = centre + np.asarray(transform.GetTranslation(), dtype=float) - matrix @ centre
    return matrix, offset


def moving_from_fixed(
    moving: sitk.AffineTransform, fixed: sitk.AffineTransform
) -> sitk.AffineTransform:
    """``T_m o T_f^-1``: a fixed image point to the moving point with the same grid position."""
    m_matrix, m_offset = matrix_and_offset(moving)
    f_matrix, f_offset = matrix_and_offset(fixed)
    f_inverse = np.linalg.inv(f_matrix)
    matrix = m_matrix @ f_inverse
    offset = m_offset - matrix @ f_offset
    return sitk.AffineTransform([float(v) for v in matrix.ravel()], [float(v) for v in offset])


def _grid_to_physical(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(G, o)`` with physical = G index + o, index in (x, y, z)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    return direction @ np.diag(image.GetSpacing()), np.asarray(image.GetOrigin(), dtype=float)


def field_grid(fixed: sitk.Image, grid: sitk.Image, fixed_affine: sitk.Transform) -> sitk.Image:
    """A grid in the fixed image's orientation over the region the training grid covers.

    Its spacing is the training grid's finest (the displacement has no finer detail), so
    the field file stays small even for sub-millimetre scans.
    """
    box = covered_box(fixed, grid, fixed_affine)
    spacing = float(min(grid.GetSpacing()))
    extent = (np.asarray(box.size) - 1) * np.asarray(fixed.GetSpacing())
    size = [int(v) for v in np.ceil(extent / spacing).astype(int) + 1]
    region = sitk.Image(size, sitk.sitkUInt8)
    region.SetSpacing([spacing] * 3)
    region.SetDirection(fixed.GetDirection())
    region.SetOrigin(fixed.TransformIndexToPhysicalPoint([int(v) for v in box.start]))
    return region


def displacement_field(
    displacement_voxels: np.ndarray,
    grid: sitk.Image,
    fixed_affine: sitk.AffineTransform,
    region: sitk.Image,
) -> sitk.Image:
    """``d(p) = L_f u_mm(T_f^-1(p))`` at every voxel of ``region``, as a vector float64 image (mm).

    ``displacement_voxels`` is R's ``(3, z, y, x)`` output on ``grid`` in voxels, channels
    ``(d, h, w)``; it is interpolated linearly and is zero outside the grid.
    """
    region_matrix, region_origin = _grid_to_physical(region)
    grid_matrix, grid_origin = _grid_to_physical(grid)
    f_matrix, f_offset = matrix_and_offset(fixed_affine)
    size = region.GetSize()
    index = np.stack(
        np.meshgrid(*(np.arange(n, dtype=float) for n in size[::-1]), indexing="ij")[::-1], axis=-1
    )  # (z, y, x, 3) holding (x, y, z) indices
    points = index @ region_matrix.T + region_origin
    on_grid = (points - f_offset) @ np.linalg.inv(f_matrix).T  # T_f^-1(p)
    grid_index = (on_grid - grid_origin) @ np.linalg.inv(grid_matrix).T  # (x, y, z)
    coordinates = np.moveaxis(grid_index[..., ::-1], -1, 0)  # (3, z, y, x) as (z, y, x)
    sampled = [
        ndimage.map_coordinates(channel, coordinates, order=1, mode="constant", cval=0.0)
        for channel in np.asarray(displacement_voxels, dtype=float)
    ]
    u_voxels_xyz = np.stack(sampled[::-1], axis=-1)
    d = u_voxels_xyz @ (f_matrix @ grid_matrix).T
    field = sitk.GetImageFromArray(d.astype(np.float64), isVector=True)
    field.CopyInformation(region)
    return field


def composite(affine: sitk.AffineTransform, field: sitk.Image) -> sitk.CompositeTransform:
    """``Phi = A o (identity + d)`` (the field is copied: ITK takes over the image it gets)."""
    vectors = sitk.Cast(sitk.Image(field), sitk.sitkVectorFloat64)
    return sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(vectors)])


def _check_registration_bundle(bundle: Bundle) -> None:
    spec = get_method(bundle.method)
    if spec.trains and bundle.model.registration is None:
        raise DataError(
            f"bundle '{bundle.path}' (method '{bundle.method}') has no registration network; "
            "use the bundle of a method that registers (e.g. deeprs, voxelmorph2, affine)"
        )


def grid_displacement(
    bundle: Bundle,
    moving: AlignedImage,
    fixed: AlignedImage,
    device: torch.device,
    cpu_bf16: bool,
) -> np.ndarray:
    """R's displacement ``(3, z, y, x)`` in grid voxels (zero for Affine only)."""
    multiple = bundle.model.multiple
    field = displacements(
        bundle.model.registration,
        volume_tensor(moving.array, device, multiple),
        volume_tensor(fixed.array, device, multiple),
        cpu_bf16,
    )
    return crop_to_shape(field, moving.array.shape)[0].cpu().numpy()


def register_images(
    moving_path: Path,
    fixed_path: Path,
    bundle: Bundle,
    device: torch.device,
    moving_label_path: Path | None = None,
    cpu_bf16: bool = True,
    aligner: Aligner | None = None,
) -> Registration:
    """Register ``moving`` onto ``fixed`` with the bundle's R; the result lies on ``fixed``'s grid."""
    _check_registration_bundle(bundle)
    for path in (moving_path, fixed_path):
        check_image(path, bundle.plan["modality"])
    aligner = aligner or Aligner(bundle.plan)
    moving, fixed = aligner.align(moving_path), aligner.align(fixed_path)
    moving_label = None
    if moving_label_path is not None:
        moving_label = read_volume(moving_label_path)
        check_same_grid(moving.native, moving_label, moving_path, moving_label_path)
    u = grid_displacement(bundle, moving, fixed, device, cpu_bf16)
    grid = aligner.target.grid
    affine = moving_from_fixed(moving.affine, fixed.affine)
    field = displacement_field(u, grid, fixed.affine, field_grid(fixed.native, grid, fixed.affine))
    # What is written is float32; move with exactly that field.
    field = sitk.Cast(sitk.Cast(field, sitk.sitkVectorFloat32), sitk.sitkVectorFloat64)
    transform = composite(affine, field)
    background = float(sitk.GetArrayViewFromImage(moving.native).min())
    moved = sitk.Resample(moving.native, fixed.native, transform, sitk.sitkLinear, background)
    moved_label = None
    if moving_label is not None:
        moved_label = sitk.Resample(
            moving_label, fixed.native, transform, sitk.sitkNearestNeighbor, 0.0
        )
    return Registration(moved, moved_label, affine, field)


def write_registration(
    result: Registration, out_dir: Path, suffix: str = ".nii.gz"
) -> dict[str, Path]:
    """``moved_image``, ``moved_label``, ``affine.tfm`` and ``displacement.nii.gz`` in ``out_dir``."""
    out_dir = Path(out_dir)
    written = {}
    images = {
        "moved_image": (result.moved, f"moved_image{suffix}"),
        "moved_label": (result.moved_label, f"moved_label{suffix}"),
        "displacement": (sitk.Cast(result.field, sitk.sitkVectorFloat32), FIELD_FILE),
    }
    for key, (image, name) in images.items():
        if image is None:
            continue
        with atomic_path(out_dir / name) as temporary:
            sitk.WriteImage(image, str(temporary), useCompression=True)
        written[key] = out_dir / name
    with atomic_path(out_dir / AFFINE_FILE) as temporary:
        sitk.WriteTransform(result.affine, str(temporary))
    written["affine"] = out_dir / AFFINE_FILE
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--moving", type=Path, required=True, help="image to move")
    parser.add_argument("--fixed", type=Path, required=True, help="image whose grid it moves onto")
    parser.add_argument(
        "--moving-label", type=Path, help="label map of the moving image (optional)"
    )
    parser.add_argument(
        "--bundle", type=Path, required=True, help="bundle.pt of a registration method"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    add_runtime_arguments(parser, "torch and elastix")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    device = select_device(args.device)
    bundle = load_bundle(args.bundle, device)
    result = register_images(
        args.moving,
        args.fixed,
        bundle,
        device,
        args.moving_label,
        args.cpu_bf16,
        Aligner(bundle.plan, args.threads),
    )
    written = write_registration(result, args.out, image_suffix(args.fixed) or ".nii.gz")
    LOG.info("wrote %s", ", ".join(str(path) for path in written.values()))
    return 0
