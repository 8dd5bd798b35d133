"""One case onto the training grid: heart box, alignment to the reference, resampling.

Callable per case (the cohort run and prediction-time preprocessing both use
:func:`process_case`). The case is also placed on the grid by its box alone (a
translation taking the reference box's centre to the case's, no rotation), the "crop
only" baseline that QC compares with the alignment in the same physical frame.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from deeprs.data.ingest import Case
from deeprs.preprocess.affine import AffineRegistrar, ElastixLog, resample_to_spacing
from deeprs.preprocess.align import (
    Alignment,
    align,
    box_centre,
    default_starts,
    turned_starts,
)
from deeprs.preprocess.crop import CropBox, box_corners, clip_box, crop, expand_box, label_box
from deeprs.preprocess.plan import AlignmentTarget
from deeprs.preprocess.reference import Reference, carry_box, working_spacing
from deeprs.preprocess.resample import (
    box_grid_at_spacing,
    resample_onto,
    scale_intensities,
)
from deeprs.preprocess.settings import PreprocessSettings
from deeprs.preprocess.space import slice_axis_warning

log = logging.getLogger(__name__)

# The moving image of the fine alignment is its heart box grown by this fraction per side,
# padded with background where that leaves the scan. elastix ignores samples that map
# outside the moving image, so with a tight box (or a short stack of thick MRI slices) the
# optimiser gains by shrinking the reference into it; padding makes that cost something.
MOVING_CONTEXT = 0.5


@dataclass
class CaseOutput:
    """What one processed case contributes to the files, the QC table and the mosaic.

    ``alignment`` is None for the reference itself; ``label_crop_only`` is the label on the
    grid by box translation only; ``planes_*`` are the mid planes (z, y, x) of the image
    before (crop only) and after alignment.
    """

    case_id: str
    subject: str
    box: dict[str, Any]
    alignment: Alignment | None
    carry: Alignment | None
    image: np.ndarray
    label: np.ndarray | None
    label_crop_only: np.ndarray | None
    planes_before: tuple[np.ndarray, np.ndarray, np.ndarray]
    planes_after: tuple[np.ndarray, np.ndarray, np.ndarray]
    seconds: float
    flags: list[str] = field(default_factory=list)

    @property
    def transform(self) -> sitk.AffineTransform:
        return self.alignment.transform if self.alignment else sitk.AffineTransform(3)


def mid_planes(array_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three orthogonal planes through the grid's centre: z (xy), y (xz) and x (yz)."""
    z, y, x = (n // 2 for n in array_zyx.shape)
    return (array_zyx[z].copy(), array_zyx[:, y].copy(), array_zyx[:, :, x].copy())


def crop_only_transform(reference_corners: np.ndarray, case_corners: np.ndarray) -> sitk.Transform:
    """The translation taking the reference box's centre to the case box's centre."""
    shift = case_corners.mean(axis=0) - reference_corners.mean(axis=0)
    return sitk.TranslationTransform(3, [float(v) for v in shift])


def moving_context(case: Case, box: CropBox, grid: sitk.Image) -> sitk.Image:
    """The case's heart box grown by :data:`MOVING_CONTEXT`, padded, at the working spacing."""
    context_box = expand_box(box, MOVING_CONTEXT)
    context = box_grid_at_spacing(case.image, context_box, working_spacing(grid))
    inside = crop(case.image, clip_box(case.image, context_box))
    return resample_onto(resample_to_spacing(inside, context.GetSpacing()), context)


def _scaled(image: sitk.Image, settings: PreprocessSettings, case_id: str) -> np.ndarray:
    return scale_intensities(
        sitk.GetArrayFromImage(image),
        settings.modality,
        settings.ct_window,
        settings.mri_percentiles,
        case_id,
    )


def process_case(
    case: Case,
    reference: Reference,
    settings: PreprocessSettings,
    registrar: AffineRegistrar,
    elastix_log: ElastixLog,
    more_starts: bool = False,
) -> CaseOutput:
    """Crop, align and resample one case onto the reference's training grid.

    Alignment starts from :func:`~deeprs.preprocess.align.default_starts`, plus their
    quarter and half turns with ``more_starts`` (for cases that aligned badly).
    """
    started = time.perf_counter()
    is_reference = case.id == reference.case.id
    carry = alignment = None
    if is_reference:
        box, source = reference.box, reference.box_source
    elif case.label is not None:
        box, source = label_box(case.label, settings.crop_margin_mm, case.id), "label"
    else:
        box, carry = carry_box(
            registrar, reference.target, case, elastix_log, reference.case.scan_axes
        )
        source = f"carried from {reference.case.id}"
    if not is_reference:
        moving = moving_context(case, box, reference.grid)
        starts = default_starts(reference.cropped, moving, reference.case.scan_axes, case.scan_axes)
        if more_starts:
            starts = turned_starts(starts, box_centre(reference.cropped))
        alignment = align(registrar, reference.cropped, moving, case.id, starts)
        elastix_log.add_all(alignment.logs)
    grid = reference.grid
    transform = alignment.transform if alignment else sitk.AffineTransform(3)
    before = crop_only_transform(reference.corners, box_corners(case.image, box))
    image = _scaled(resample_onto(case.image, grid, transform), settings, case.id)
    image_before = _scaled(resample_onto(case.image, grid, before), settings, case.id)
    label = label_crop_only = None
    if case.label is not None:
        label = sitk.GetArrayFromImage(resample_onto(case.label, grid, transform, is_label=True))
        label_crop_only = sitk.GetArrayFromImage(
            resample_onto(case.label, grid, before, is_label=True)
        )
    flags = list(carry.flags if carry else []) + list(alignment.flags if alignment else [])
    matrix = np.reshape(transform.GetMatrix(), (3, 3))
    case_axes = np.linalg.solve(matrix, np.reshape(case.image.GetDirection(), (3, 3)))
    warning = slice_axis_warning(
        reference.space, case.image.GetSpacing(), case_axes.ravel(), case.id
    )
    if warning:
        log.warning(warning)
        flags.append(warning.split(": ", 1)[1])
    seconds = time.perf_counter() - started
    log.info(
        "case %s: box %s + %s (%s), start %s, similarity %.4f, %.1f s",
        case.id,
        box.start,
        box.size,
        source,
        alignment.start if alignment else "-",
        alignment.similarity if alignment else float("nan"),
        seconds,
    )
    return CaseOutput(
        case_id=case.id,
        subject=case.subject,
        box={"source": source, **box.to_json(case.image)},
        alignment=alignment,
        carry=carry,
        image=image,
        label=label,
        label_crop_only=label_crop_only,
        planes_before=mid_planes(image_before),
        planes_after=mid_planes(image),
        seconds=seconds,
        flags=flags,
    )


@dataclass(frozen=True)
class CaseAlignment:
    """A new image's heart box (and where it came from) and its map onto the training grid.

    ``affine`` maps grid (reference) points to the image's points; ``carry_metric`` is NaN
    when the box came from the image's own label; ``flags`` as in ``qc.csv``.
    """

    box: CropBox
    source: str
    affine: sitk.AffineTransform
    final_metric: float
    carry_metric: float
    flags: tuple[str, ...] = ()


def align_case(
    case: Case,
    target: AlignmentTarget,
    registrar: AffineRegistrar,
    crop_margin_mm: float,
    elastix_log: ElastixLog | None = None,
) -> CaseAlignment:
    """Heart box (own label, else carried from the reference) and the multi-start alignment
    onto ``target``: what ``deeprs predict``/``register`` do to a new image."""
    elastix_log = elastix_log or ElastixLog(None)
    carry = None
    if case.label is not None:
        box, source = label_box(case.label, crop_margin_mm, case.id), "label"
    else:
        box, carry = carry_box(registrar, target, case, elastix_log)
        source = f"carried from {target.reference_id}"
    moving = moving_context(case, box, target.grid)
    starts = default_starts(target.cropped, moving, None, case.scan_axes)
    alignment = align(registrar, target.cropped, moving, case.id, starts)
    elastix_log.add_all(alignment.logs)
    return CaseAlignment(
        box,
        source,
        alignment.transform,
        alignment.elastix_metric,
        carry.elastix_metric if carry else float("nan"),
        tuple((carry.flags if carry else []) + alignment.flags),
    )
