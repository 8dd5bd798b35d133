"""The preprocessing plan: everything needed to bring a new image into the training space.

A trained network only understands images cropped, aligned and scaled exactly as its
training cohort was. :func:`preprocess_plan` gathers that recipe in one dictionary (the
settings, the reference's heart box, the target grid and the two reference images the
alignment registers to), so that prediction (``deeprs predict``) replays the steps of
``deeprs preprocess`` with this module's own functions instead of copies of them.

On disk (``results/preprocessed/plan.json``) the images are written beside the JSON as
MetaImage files, which keep the geometry in full precision and open in 3D Slicer.
Extend the plan here, in one place: every consumer reads the dictionary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from deeprs.errors import DataError
from deeprs.io import atomic_path, read_json, write_json

if TYPE_CHECKING:
    from deeprs.preprocess.pipeline import PreprocessSettings

PLAN_VERSION = 1
"""Raised whenever the meaning of a plan entry changes; readers refuse other versions."""

PLAN_FILE = "plan.json"
PLAN_IMAGES = ("reference_cropped", "reference_coarse")


@dataclass(frozen=True)
class AlignmentTarget:
    """What every case is aligned to: the reference's heart box, grid and working images.

    ``box_corners_mm`` are the eight physical corners of the reference's heart box,
    ``grid`` the empty target grid (training arrays live on it), ``cropped`` the heart box
    at the grid's spacing (fixed image of the fine affine) and ``coarse`` the whole
    reference at a coarse spacing (fixed image when a heart box is carried to a case).
    """

    reference_id: str
    box_corners_mm: np.ndarray
    grid: sitk.Image
    cropped: sitk.Image
    coarse: sitk.Image


def grid_geometry(image: sitk.Image) -> dict[str, list[float] | list[int]]:
    """Size, spacing, origin and direction of an image as plain lists (x, y, z order)."""
    return {
        "size_xyz": [int(v) for v in image.GetSize()],
        "spacing_xyz": [float(v) for v in image.GetSpacing()],
        "origin_xyz": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
    }


def empty_grid(geometry: dict[str, Any]) -> sitk.Image:
    """The empty uint8 image of :func:`grid_geometry`'s output."""
    grid = sitk.Image([int(v) for v in geometry["size_xyz"]], sitk.sitkUInt8)
    grid.SetSpacing([float(v) for v in geometry["spacing_xyz"]])
    grid.SetOrigin([float(v) for v in geometry["origin_xyz"]])
    grid.SetDirection([float(v) for v in geometry["direction"]])
    return grid


def preprocess_plan(settings: PreprocessSettings, target: AlignmentTarget) -> dict[str, Any]:
    """The plan of a preprocessed cohort; ``images`` holds SimpleITK images, the rest is JSON."""
    return {
        "plan_version": PLAN_VERSION,
        "modality": settings.modality,
        "labels": dict(settings.labels),
        "crop_margin_mm": settings.crop_margin_mm,
        "target_shape_xyz": list(settings.target_shape_xyz),
        "ct_window": list(settings.ct_window),
        "mri_percentiles": list(settings.mri_percentiles),
        "reference": {
            "id": target.reference_id,
            "box_corners_mm": np.asarray(target.box_corners_mm, dtype=float).tolist(),
        },
        "grid": grid_geometry(target.grid),
        "images": {"reference_cropped": target.cropped, "reference_coarse": target.coarse},
    }


def alignment_target(plan: dict[str, Any]) -> AlignmentTarget:
    """The :class:`AlignmentTarget` a plan describes."""
    return AlignmentTarget(
        reference_id=plan["reference"]["id"],
        box_corners_mm=np.asarray(plan["reference"]["box_corners_mm"], dtype=float),
        grid=empty_grid(plan["grid"]),
        cropped=plan["images"]["reference_cropped"],
        coarse=plan["images"]["reference_coarse"],
    )


def write_plan(folder: str | Path, plan: dict[str, Any]) -> Path:
    """``plan.json`` and one ``plan_<name>.mha`` per image in ``folder``; returns the JSON path."""
    folder = Path(folder)
    files = {}
    for name, image in plan["images"].items():
        files[name] = f"plan_{name}.mha"
        with atomic_path(folder / files[name]) as temporary:
            sitk.WriteImage(image, str(temporary), useCompression=True)
    write_json(folder / PLAN_FILE, {**plan, "images": files})
    return folder / PLAN_FILE


def check_plan_version(plan: dict[str, Any], source: str | Path) -> None:
    version = plan.get("plan_version") if isinstance(plan, dict) else None
    if version != PLAN_VERSION:
        raise DataError(
            f"'{source}' holds a preprocessing plan of version {version}, but this deeprs "
            f"reads version {PLAN_VERSION}; rerun the preprocessing step with this version"
        )


def read_plan(path: str | Path) -> dict[str, Any]:
    """The plan written by :func:`write_plan`, with its images read back."""
    path = Path(path)
    try:
        plan = read_json(path)
    except FileNotFoundError:
        raise DataError(f"plan '{path}' does not exist; rerun the preprocessing step") from None
    except ValueError as error:
        raise DataError(f"plan '{path}' is not valid JSON ({error})") from None
    check_plan_version(plan, path)
    images = {}
    for name in PLAN_IMAGES:
        image_path = path.parent / plan["images"][name]
        if not image_path.is_file():
            raise DataError(
                f"plan '{path}' needs '{image_path}', which is missing; rerun the "
                "preprocessing step"
            )
        images[name] = sitk.ReadImage(str(image_path))
    return {**plan, "images": images}
