"""The reference case: its heart box, the training grid over it and its working images.

``preprocess.reference`` names it (``auto``: the first unlabelled case by id, or the first
case when every case is labelled). A labelled reference uses its own label for its box; an
unlabelled one takes the box where at least half of the labelled cases' heart masks,
carried to it by coarse affine registrations, agree.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from deeprs.data.ingest import Case, CaseFiles, load_case
from deeprs.errors import ConfigError
from deeprs.preprocess.affine import AffineRegistrar, ElastixLog, resample_to_spacing
from deeprs.preprocess.align import Alignment, align, default_starts
from deeprs.preprocess.crop import CropBox, box_corners, crop, enclosing_box, label_box
from deeprs.preprocess.plan import AlignmentTarget
from deeprs.preprocess.resample import resample_onto
from deeprs.preprocess.settings import PreprocessSettings
from deeprs.preprocess.space import TargetSpace, target_space

log = logging.getLogger(__name__)

# Box carrying registers whole images: a coarse grid is enough to place a heart box.
CARRY_SPACING_MM = 5.0
CARRY_RESOLUTIONS = 2
CARRY_ITERATIONS = 200


@dataclass
class Reference:
    """The fixed image of every alignment and the training grid over its heart box."""

    case: Case
    box: CropBox
    box_source: str
    space: TargetSpace
    cropped: sitk.Image
    coarse: sitk.Image

    @property
    def grid(self) -> sitk.Image:
        return self.space.grid()

    @property
    def corners(self) -> np.ndarray:
        """The heart box's eight physical corners (mm)."""
        return box_corners(self.case.image, self.box)

    @property
    def target(self) -> AlignmentTarget:
        """What new images align to (see :mod:`deeprs.preprocess.plan`)."""
        return AlignmentTarget(self.case.id, self.corners, self.grid, self.cropped, self.coarse)


def choose_reference(cases: Sequence[CaseFiles], requested: str) -> CaseFiles:
    """The named case, or for ``auto`` the first unlabelled case (the first case if none)."""
    by_id = {case.id: case for case in cases}
    if requested != "auto":
        if requested not in by_id:
            raise ConfigError(
                f"config key 'preprocess.reference': case '{requested}' is not in the cohort; "
                "use 'auto' or one of the case ids"
            )
        return by_id[requested]
    unlabelled = [case for case in cases if case.label is None]
    return unlabelled[0] if unlabelled else cases[0]


def coarse(image: sitk.Image) -> sitk.Image:
    """The whole scan at :data:`CARRY_SPACING_MM` for placing boxes."""
    return resample_to_spacing(image, np.full(3, CARRY_SPACING_MM))


def working_spacing(grid: sitk.Image) -> np.ndarray:
    """Registration spacing: the target grid's finest spacing on every axis (never upsampled)."""
    return np.full(3, min(grid.GetSpacing()))


def coarse_alignment(
    registrar: AffineRegistrar,
    fixed: sitk.Image,
    fixed_scan_axes: Sequence[float] | None,
    moving_case: Case,
) -> Alignment:
    """Whole-scan alignment at the coarse spacing (box carrying and heart-mask voting)."""
    moving = coarse(moving_case.image)
    return align(
        registrar,
        fixed,
        moving,
        moving_case.id,
        default_starts(fixed, moving, fixed_scan_axes, moving_case.scan_axes),
        resolutions=CARRY_RESOLUTIONS,
        iterations=CARRY_ITERATIONS,
    )


def carry_box(
    registrar: AffineRegistrar,
    target: AlignmentTarget,
    case: Case,
    elastix_log: ElastixLog,
    target_scan_axes: Sequence[float] | None = None,
) -> tuple[CropBox, Alignment]:
    """The reference's heart box mapped into an unlabelled case by a coarse alignment."""
    alignment = coarse_alignment(registrar, target.coarse, target_scan_axes, case)
    elastix_log.add_all(alignment.logs)
    mapped = np.array(
        [alignment.transform.TransformPoint([float(v) for v in c]) for c in target.box_corners_mm]
    )
    return enclosing_box(case.image, mapped), alignment


def _majority_heart_box(
    case: Case,
    case_coarse: sitk.Image,
    cohort: Sequence[CaseFiles],
    settings: PreprocessSettings,
    registrar: AffineRegistrar,
    elastix_log: ElastixLog,
) -> tuple[CropBox, str]:
    """Heart box of an unlabelled reference from every labelled case, none decisive alone.

    Each labelled case is registered (coarse affine) to the reference and its heart mask
    resampled into it; the box is that of the voxels where at least half of the masks
    agree, plus the margin. A majority vote is tight (unlike a union of boxes) and no
    single label decides it.
    """
    votes = np.zeros(sitk.GetArrayViewFromImage(case_coarse).shape, dtype=np.int32)
    labelled_cases = [c for c in cohort if c.label is not None]
    if not labelled_cases:
        raise ConfigError(
            "config key 'data.dir': the cohort has no labelled case, so no heart box can be "
            "found; add at least one label"
        )
    for files in labelled_cases:
        labelled = load_case(files, settings.labels)
        alignment = coarse_alignment(registrar, case_coarse, case.scan_axes, labelled)
        elastix_log.add_all(alignment.logs)
        mask = sitk.Cast(labelled.label > 0, sitk.sitkUInt8)
        warped = resample_onto(mask, case_coarse, alignment.transform, is_label=True)
        votes += sitk.GetArrayViewFromImage(warped)
    majority = sitk.GetImageFromArray((2 * votes >= len(labelled_cases)).astype(np.uint8))
    majority.CopyInformation(case_coarse)
    coarse_box = label_box(majority, settings.crop_margin_mm, case.id)
    box = enclosing_box(case.image, box_corners(case_coarse, coarse_box))
    return box, f"majority of {len(labelled_cases)} labelled heart masks carried to it"


def build_reference(
    files: CaseFiles,
    cohort: Sequence[CaseFiles],
    settings: PreprocessSettings,
    registrar: AffineRegistrar,
    elastix_log: ElastixLog,
) -> Reference:
    """Load the reference and find its heart box (without its own label when unlabelled)."""
    case = load_case(files, settings.labels)
    case_coarse = coarse(case.image)
    if case.label is not None:
        box, source = label_box(case.label, settings.crop_margin_mm, case.id), "label"
    else:
        box, source = _majority_heart_box(
            case, case_coarse, cohort, settings, registrar, elastix_log
        )
    space = target_space(case.image, box, settings.target_shape_xyz)
    cropped = resample_to_spacing(crop(case.image, box), working_spacing(space.grid()))
    log.info(
        "reference %s: box %s + %s (%s); target grid %s voxels of %s mm",
        case.id,
        box.start,
        box.size,
        source,
        space.shape_xyz,
        tuple(round(v, 2) for v in space.spacing_xyz),
    )
    return Reference(case, box, source, space, cropped, case_coarse)
