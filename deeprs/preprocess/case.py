"""One case onto the training grid: heart box, alignment to the reference, resampling.

Callable per case (the cohort run and prediction-time preprocessing both use
:func:`process_case`). The case is also placed on the grid by its box alone (a
translation taking the reference box's centre to the case's, no rotation), the "crop
only" baseline that QC compares with the alignment in the same physical frame.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
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
from deeprs.preprocess.crop import (
    CropBox,
    box_corners,
    clip_box,
    crop,
    enclosing_box,
    label_box,
)
from deeprs.preprocess.plan import AlignmentTarget
from deeprs.preprocess.reference import Reference, carry_box, working_spacing
from deeprs.preprocess.resample import (
    resample_onto,
    scale_intensities,
)
from deeprs.preprocess.settings import PreprocessSettings
from deeprs.preprocess.space import TargetSpace, slice_axis_warning, turned_slice_axis

log = logging.getLogger(__name__)

# The moving image of the fine alignment is the heart's extent grown by this fraction per
# side, padded with background where that leaves the scan. elastix ignores samples that map
# outside the moving image, so with a tight box (or a short stack of thick MRI slices) the
# optimiser gains by shrinking the reference into it; padding makes that cost something.
MOVING_CONTEXT = 0.5
# The scan is smoothed (anti-aliased) along an axis before resampling onto the moving
# context only when the context's spacing is this many times coarser: below it the elastix
# pyramid's own smoothing suffices, and smoothing would treat a scan differently by grid.
ANTI_ALIAS_RATIO = 1.5


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


def heart_extent(
    case: Case,
    box: CropBox,
    axes: np.ndarray,
    margin_mm: float,
    corners_mm: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The heart's extent (mm) along the columns of ``axes``, whatever the case's grid.

    A labelled case: every labelled voxel's full extent, plus ``margin_mm``. An unlabelled
    one: ``corners_mm`` (the reference's box carried into it, margin included), else the
    corners of its ``box``. A box of the case's own voxels would not do: on an oblique grid
    it encloses the turned heart, so the same anatomy would get another moving image.
    """
    if case.label is not None:
        index = np.argwhere(sitk.GetArrayViewFromImage(case.label) > 0)[:, ::-1]
        steps = np.reshape(case.label.GetDirection(), (3, 3)) * np.asarray(case.label.GetSpacing())
        along = (np.asarray(case.label.GetOrigin()) + index @ steps.T) @ axes
        half = 0.5 * np.abs(axes.T @ steps).sum(axis=1) + margin_mm
        return along.min(axis=0) - half, along.max(axis=0) + half
    points = box_corners(case.image, box) if corners_mm is None else np.asarray(corners_mm)
    along = points @ axes
    return along.min(axis=0), along.max(axis=0)


def moving_context(
    case: Case,
    box: CropBox,
    grid: sitk.Image,
    margin_mm: float,
    corners_mm: np.ndarray | None = None,
    turn: np.ndarray | None = None,
) -> sitk.Image:
    """The moving image of the fine alignment: the heart's extent (:func:`heart_extent`)
    grown by :data:`MOVING_CONTEXT`, at the working spacing, on the training grid's axes
    turned by ``turn`` (a start's rotation: the reference grid as that start carries it
    into the case), padded with background outside the scan.

    Defined physically, so the same anatomy on another voxel grid (oblique, permuted)
    gives the same moving image: on a case's own axes, an ACDC case regridded to oblique
    1.5 mm voxels aligned 4.2-5.3 mm (grid corners) from the unchanged case, on these
    axes 0.9-1.4 mm. Turned with the start: a header turned 40 degrees about two axes
    aligned wrongly (determinant 0.45) on unturned axes (docs/methods.md).
    """
    axes = (np.eye(3) if turn is None else turn) @ np.reshape(grid.GetDirection(), (3, 3))
    low, high = heart_extent(case, box, axes, margin_mm, corners_mm)
    grow = MOVING_CONTEXT * (high - low)
    low, high = low - grow, high + grow
    spacing = float(min(working_spacing(grid)))
    shape = np.maximum(np.round((high - low) / spacing), 2).astype(int)
    step = (high - low) / shape
    context = sitk.Image([int(v) for v in shape], sitk.sitkUInt8)
    context.SetSpacing([float(v) for v in step])
    context.SetDirection([float(v) for v in axes.ravel()])
    context.SetOrigin([float(v) for v in axes @ (low + step / 2)])
    # Only the part of the scan under the context (one voxel more for interpolation).
    corners = [
        [float(v) for v in axes @ np.where(pick, high, low)]
        for pick in itertools.product((False, True), repeat=3)
    ]
    inside = enclosing_box(case.image, np.asarray(corners))
    grown = CropBox(
        tuple(int(v) - 1 for v in inside.start),  # type: ignore[arg-type]
        tuple(int(v) + 2 for v in inside.size),  # type: ignore[arg-type]
    )
    scan = crop(case.image, clip_box(case.image, grown))
    own = np.asarray(scan.GetSpacing())
    anti_alias = np.where(step > ANTI_ALIAS_RATIO * own, step, own)
    return resample_onto(resample_to_spacing(scan, anti_alias), context)


def slice_axis_check(
    space: TargetSpace, image: sitk.Image
) -> Callable[[sitk.AffineTransform], bool]:
    """Whether a map from grid to case points keeps the case's slice axis on the grid's
    (see :func:`~deeprs.preprocess.space.turned_slice_axis`)."""
    direction = np.reshape(image.GetDirection(), (3, 3))

    def keeps(transform: sitk.AffineTransform) -> bool:
        case_axes = np.linalg.solve(np.reshape(transform.GetMatrix(), (3, 3)), direction)
        return turned_slice_axis(space, image.GetSpacing(), case_axes.ravel()) is None

    return keeps


class ContextViews:
    """:func:`moving_context` of one case per start rotation, each built once."""

    def __init__(
        self,
        case: Case,
        box: CropBox,
        grid: sitk.Image,
        margin_mm: float,
        corners_mm: np.ndarray | None,
    ) -> None:
        self._arguments = (case, box, grid, margin_mm, corners_mm)
        self._built: dict[bytes, sitk.Image] = {}

    def __call__(self, turn: np.ndarray) -> sitk.Image:
        key = np.round(np.asarray(turn, float), 6).tobytes()
        if key not in self._built:
            self._built[key] = moving_context(*self._arguments, turn=turn)
        return self._built[key]


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
        carried = (
            np.array([carry.transform.TransformPoint(list(c)) for c in reference.corners])
            if carry
            else None
        )
        views = ContextViews(case, box, reference.grid, settings.crop_margin_mm, carried)
        moving = views(np.eye(3))
        starts = default_starts(reference.cropped, moving, reference.case.scan_axes, case.scan_axes)
        if more_starts:
            starts = turned_starts(starts, box_centre(reference.cropped))
        alignment = align(
            registrar,
            reference.cropped,
            moving,
            case.id,
            starts,
            view=views,
            keeps_slice_axis=slice_axis_check(reference.space, case.image),
        )
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
    carried = (
        np.array([carry.transform.TransformPoint(list(c)) for c in target.box_corners_mm])
        if carry
        else None
    )
    views = ContextViews(case, box, target.grid, crop_margin_mm, carried)
    moving = views(np.eye(3))
    starts = default_starts(target.cropped, moving, None, case.scan_axes)
    alignment = align(
        registrar,
        target.cropped,
        moving,
        case.id,
        starts,
        view=views,
        keeps_slice_axis=slice_axis_check(TargetSpace.from_grid(target.grid), case.image),
    )
    elastix_log.add_all(alignment.logs)
    return CaseAlignment(
        box,
        source,
        alignment.transform,
        alignment.elastix_metric,
        carry.elastix_metric if carry else float("nan"),
        tuple((carry.flags if carry else []) + alignment.flags),
    )
