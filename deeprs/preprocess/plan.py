"""The preprocessing plan: everything a new image needs to land on the training grid.

``plan.json`` (written by ``deeprs preprocess``) holds the crop rule and margin, the
reference's heart box and working images, the target space and the intensity scaling.
:func:`preprocessing_plan` reads it back; :func:`prepare_image` applies it to one new
image (prediction time) with the same functions the cohort run used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from deeprs.data.ingest import Case, canonical
from deeprs.errors import DataError
from deeprs.io import read_json
from deeprs.preprocess.affine import AffineRegistrar, ElastixLog
from deeprs.preprocess.case import CaseOutput, process_case
from deeprs.preprocess.crop import enclosing_box
from deeprs.preprocess.reference import Reference
from deeprs.preprocess.settings import PreprocessSettings
from deeprs.preprocess.space import TargetSpace

CROP_RULE = (
    "labelled case: bounding box of its label plus margin_mm per side; unlabelled case: "
    "the reference's heart box carried into it by a coarse affine registration"
)


@dataclass(frozen=True)
class PreprocessingPlan:
    """What a new image needs: crop rule, reference geometry, target space, intensities."""

    reference: str
    reference_scan_axes: tuple[float, ...]
    crop_rule: str
    margin_mm: float
    reference_box_corners_mm: list[list[float]]
    reference_crop: str
    reference_coarse: str
    target_space: TargetSpace
    modality: str
    ct_window: tuple[float, float]
    mri_percentiles: tuple[float, float]
    labels: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "reference_scan_axes": [round(float(v), 8) for v in self.reference_scan_axes],
            "crop_rule": self.crop_rule,
            "margin_mm": self.margin_mm,
            "reference_box_corners_mm": self.reference_box_corners_mm,
            "reference_crop": self.reference_crop,
            "reference_coarse": self.reference_coarse,
            "target_space": self.target_space.to_json(),
            "intensity": {
                "modality": self.modality,
                "ct_window": list(self.ct_window),
                "mri_percentiles": list(self.mri_percentiles),
            },
            "labels": self.labels,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreprocessingPlan:
        intensity = data["intensity"]
        return cls(
            data["reference"],
            tuple(float(v) for v in data["reference_scan_axes"]),
            data["crop_rule"],
            float(data["margin_mm"]),
            data["reference_box_corners_mm"],
            data["reference_crop"],
            data["reference_coarse"],
            TargetSpace.from_json(data["target_space"]),
            intensity["modality"],
            tuple(intensity["ct_window"]),  # type: ignore[arg-type]
            tuple(intensity["mri_percentiles"]),  # type: ignore[arg-type]
            dict(data["labels"]),
        )


def build_plan(reference: Reference, settings: PreprocessSettings) -> PreprocessingPlan:
    from deeprs.preprocess.outputs import REFERENCE_COARSE, REFERENCE_CROP

    return PreprocessingPlan(
        reference.case.id,
        reference.case.scan_axes,
        CROP_RULE,
        settings.crop_margin_mm,
        [[round(float(v), 4) for v in corner] for corner in reference.corners],
        REFERENCE_CROP,
        REFERENCE_COARSE,
        reference.space,
        settings.modality,
        settings.ct_window,
        settings.mri_percentiles,
        dict(settings.labels),
    )


def preprocessing_plan(preprocessed: str | Path) -> PreprocessingPlan:
    """The plan of a preprocessed folder (e.g. ``results/preprocessed``)."""
    path = Path(preprocessed) / "plan.json"
    if not path.is_file():
        raise DataError(f"'{path}' does not exist; run `deeprs preprocess` first")
    return PreprocessingPlan.from_json(read_json(path))


def prepare_image(
    plan: PreprocessingPlan,
    preprocessed: str | Path,
    image: sitk.Image,
    case_id: str,
    registrar: AffineRegistrar,
    label: sitk.Image | None = None,
) -> CaseOutput:
    """One new image (and optionally its label, classes 0..K) on the training grid.

    ``image`` is any 3-D scan; it is reoriented to LPS like every cohort case. The
    returned output holds the float32 image array, the alignment and its flags.
    """
    folder = Path(preprocessed)
    cropped = sitk.ReadImage(str(folder / plan.reference_crop))
    coarse = sitk.ReadImage(str(folder / plan.reference_coarse))
    corners = np.asarray(plan.reference_box_corners_mm)
    # The reference's heart box, held as a stand-in image whose voxel box is the whole grid.
    stand_in = plan.target_space.grid()
    reference = Reference(
        case=Case(plan.reference, plan.reference, stand_in, None, plan.reference_scan_axes),
        box=enclosing_box(stand_in, corners),
        box_source="plan",
        space=plan.target_space,
        cropped=cropped,
        coarse=coarse,
    )
    settings = PreprocessSettings(
        data_dir=folder,
        layout="-",
        modality=plan.modality,
        labels=plan.labels,
        crop_margin_mm=plan.margin_mm,
        target_shape_xyz=plan.target_space.shape_xyz,
        ct_window=plan.ct_window,
        mri_percentiles=plan.mri_percentiles,
    )
    case = Case(
        case_id,
        case_id,
        canonical(sitk.Cast(image, sitk.sitkFloat32)),
        canonical(label) if label is not None else None,
        image.GetDirection(),
    )
    return process_case(case, reference, settings, registrar, ElastixLog(None))
