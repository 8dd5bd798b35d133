"""``deeprs preprocess``: ingest, heart crop, affine alignment, resampling and QC of a cohort.

Order of work (the reasons are in docs/methods.md, section "Preprocessing"):

1. Choose the reference (``preprocess.reference``; ``auto``: the first unlabelled case by
   id, or the first case when every case is labelled) and its heart box. A labelled
   reference uses its own label; an unlabelled one takes the box where at least half of
   the labelled cases' heart masks, carried to it by coarse affine registrations, agree.
2. For every case, one at a time (memory stays at one raw volume): its heart box (own
   label, or carried from the reference by a coarse affine registration), an affine
   registration of the cropped case to the cropped reference, and resampling of the full
   image (linear) and label (nearest neighbour) onto the reference box's target grid.
3. QC table, crop boxes, mosaic, and ``manifest.json`` last.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from deeprs.config import load_config, validate_config
from deeprs.data.grouping import DEFAULT_SUBJECT_PATTERN
from deeprs.data.ingest import Case, CaseFiles, discover_cases, load_case
from deeprs.errors import ConfigError
from deeprs.io import atomic_path, write_image, write_json, write_text
from deeprs.preprocess.affine import AffineRegistrar, resample_to_spacing
from deeprs.preprocess.crop import (
    CropBox,
    box_corners,
    clip_box,
    crop,
    enclosing_box,
    expand_box,
    label_box,
)
from deeprs.preprocess.plan import AlignmentTarget, preprocess_plan, write_plan
from deeprs.preprocess.qc import mean_dice, mean_pairwise_dice, write_mosaic
from deeprs.preprocess.resample import (
    box_grid,
    box_grid_at_spacing,
    resample_onto,
    scale_intensities,
)
from deeprs.progress import Progress

log = logging.getLogger(__name__)

# Box carrying registers whole images: a coarse grid is enough to place a heart box.
CARRY_SPACING_MM = 5.0
CARRY_RESOLUTIONS = 2
CARRY_ITERATIONS = 200
# The moving image of the fine alignment is its heart box grown by this fraction per side,
# padded with background where that leaves the scan. elastix ignores samples that map
# outside the moving image, so with a tight box (or a short stack of thick MRI slices) the
# optimiser gains by shrinking the reference into it; padding makes that cost something.
MOVING_CONTEXT = 0.5


@dataclass(frozen=True)
class PreprocessSettings:
    """What the step needs from the config (``data`` and ``preprocess`` sections)."""

    data_dir: Path
    layout: str
    modality: str
    labels: dict[str, int]
    reference: str = "auto"
    crop_margin_mm: float = 10.0
    target_shape_xyz: tuple[int, int, int] = (128, 128, 96)
    ct_window: tuple[float, float] = (-200.0, 800.0)
    mri_percentiles: tuple[float, float] = (1.0, 99.0)
    subject_pattern: str = DEFAULT_SUBJECT_PATTERN

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PreprocessSettings:
        data, settings = config["data"], config["preprocess"]
        return cls(
            data_dir=Path(data["dir"]),
            layout=data["layout"],
            modality=data["modality"],
            labels=dict(data["labels"]),
            reference=settings["reference"],
            crop_margin_mm=float(settings["crop_margin_mm"]),
            target_shape_xyz=tuple(int(v) for v in settings["target_shape"]),  # type: ignore[arg-type]
            ct_window=tuple(float(v) for v in settings["ct_window"]),  # type: ignore[arg-type]
            mri_percentiles=tuple(float(v) for v in settings["mri_percentiles"]),  # type: ignore[arg-type]
            subject_pattern=data["subject_pattern"],
        )


@dataclass
class Reference:
    """The fixed image of every alignment: its case, heart box and target grid."""

    case: Case
    box: CropBox
    box_source: str
    grid: sitk.Image
    cropped: sitk.Image
    coarse: sitk.Image

    @property
    def target(self) -> AlignmentTarget:
        """What the other cases (and new images, see :mod:`deeprs.preprocess.plan`) align to."""
        return AlignmentTarget(
            reference_id=self.case.id,
            box_corners_mm=box_corners(self.case.image, self.box),
            grid=self.grid,
            cropped=self.cropped,
            coarse=self.coarse,
        )


@dataclass(frozen=True)
class Alignment:
    """A case's heart box (and where it came from) and its affine onto the reference grid.

    ``affine`` maps grid (reference) points to the case's points; ``carry_metric`` is NaN
    when the box came from the case's own label.
    """

    box: CropBox
    source: str
    affine: sitk.AffineTransform
    final_metric: float
    carry_metric: float


@dataclass
class CaseOutput:
    """What one processed case contributes to the manifest, QC table and mosaic."""

    case_id: str
    subject: str
    box: dict[str, Any]
    affine: sitk.AffineTransform
    final_metric: float
    carry_metric: float
    image: np.ndarray
    label: np.ndarray | None
    label_crop_only: np.ndarray | None
    seconds: float


class _ElastixLog:
    """Appends every elastix log, with a header naming the registration, to one file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def add(self, title: str, text: str) -> None:
        if self.path is not None:
            with open(self.path, "a") as handle:
                handle.write(f"\n===== {title} =====\n{text}\n")


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


def carry_box(
    registrar: AffineRegistrar,
    source_coarse: sitk.Image,
    source_corners_mm: np.ndarray,
    target_coarse: sitk.Image,
    target_image: sitk.Image,
    name: str,
    elastix_log: _ElastixLog,
) -> tuple[CropBox, float]:
    """Map a box (its physical corners) into the target image through a coarse affine registration."""
    result = registrar.register(
        source_coarse,
        target_coarse,
        name,
        resolutions=CARRY_RESOLUTIONS,
        iterations=CARRY_ITERATIONS,
    )
    elastix_log.add(f"carry box to {name}", result.log)
    mapped = np.array(
        [result.transform.TransformPoint([float(v) for v in c]) for c in source_corners_mm]
    )
    return enclosing_box(target_image, mapped), result.final_metric


def _coarse(image: sitk.Image) -> sitk.Image:
    return resample_to_spacing(image, np.full(3, CARRY_SPACING_MM))


def _majority_heart_box(
    case: Case,
    coarse: sitk.Image,
    cohort: Sequence[CaseFiles],
    settings: PreprocessSettings,
    registrar: AffineRegistrar,
    elastix_log: _ElastixLog,
) -> tuple[CropBox, str]:
    """Heart box of an unlabelled reference from every labelled case, none decisive alone.

    Each labelled case is registered (coarse affine) to the reference and its heart mask
    resampled into it; the box is that of the voxels where at least half of the masks
    agree, plus the margin. A majority vote is tight (unlike a union of boxes) and no
    single label decides it.
    """
    votes = np.zeros(sitk.GetArrayViewFromImage(coarse).shape, dtype=np.int32)
    labelled_cases = [c for c in cohort if c.label is not None]
    if not labelled_cases:
        raise ConfigError(
            "config key 'data.dir': the cohort has no labelled case, so no heart box can be "
            "found; add at least one label"
        )
    for files in labelled_cases:
        labelled = load_case(files, settings.labels)
        result = registrar.register(
            coarse,
            _coarse(labelled.image),
            files.id,
            resolutions=CARRY_RESOLUTIONS,
            iterations=CARRY_ITERATIONS,
        )
        elastix_log.add(f"heart mask of {files.id} to reference {case.id}", result.log)
        mask = sitk.Cast(labelled.label > 0, sitk.sitkUInt8)
        warped = resample_onto(mask, coarse, result.transform, is_label=True)
        votes += sitk.GetArrayViewFromImage(warped)
    majority = sitk.GetImageFromArray((2 * votes >= len(labelled_cases)).astype(np.uint8))
    majority.CopyInformation(coarse)
    coarse_box = label_box(majority, settings.crop_margin_mm, case.id)
    box = enclosing_box(case.image, box_corners(coarse, coarse_box))
    return box, f"majority of {len(labelled_cases)} labelled heart masks carried to it"


def build_reference(
    files: CaseFiles,
    cohort: Sequence[CaseFiles],
    settings: PreprocessSettings,
    registrar: AffineRegistrar,
    elastix_log: _ElastixLog,
) -> Reference:
    """Load the reference and find its heart box without using any label of its own if unlabelled."""
    case = load_case(files, settings.labels)
    coarse = _coarse(case.image)
    if case.label is not None:
        box, source = label_box(case.label, settings.crop_margin_mm, case.id), "label"
    else:
        box, source = _majority_heart_box(case, coarse, cohort, settings, registrar, elastix_log)
    grid = box_grid(case.image, box, settings.target_shape_xyz)
    working = resample_to_spacing(crop(case.image, box), np.asarray(grid.GetSpacing()))
    log.info("reference %s: box %s + %s (%s)", case.id, box.start, box.size, source)
    return Reference(case, box, source, grid, working, coarse)


def align_case(
    case: Case,
    target: AlignmentTarget,
    registrar: AffineRegistrar,
    crop_margin_mm: float,
    elastix_log: _ElastixLog | None = None,
) -> Alignment:
    """Heart box (own label, else carried from the reference) and the affine onto ``target``.

    Used for every case but the reference, and by ``deeprs predict``/``register`` for new
    images, which have no label and so always take the carried box.
    """
    elastix_log = elastix_log or _ElastixLog(None)
    carry_metric = float("nan")
    if case.label is not None:
        box, source = label_box(case.label, crop_margin_mm, case.id), "label"
    else:
        box, carry_metric = carry_box(
            registrar,
            target.coarse,
            target.box_corners_mm,
            _coarse(case.image),
            case.image,
            case.id,
            elastix_log,
        )
        source = f"carried from {target.reference_id}"
    context_box = expand_box(box, MOVING_CONTEXT)
    context = box_grid_at_spacing(case.image, context_box, target.grid.GetSpacing())
    inside = crop(case.image, clip_box(case.image, context_box))
    moving = resample_onto(resample_to_spacing(inside, context.GetSpacing()), context)
    result = registrar.register(target.cropped, moving, case.id)
    elastix_log.add(f"align {case.id} to {target.reference_id}", result.log)
    return Alignment(box, source, result.transform, result.final_metric, carry_metric)


def process_case(
    files: CaseFiles,
    reference: Reference,
    settings: PreprocessSettings,
    registrar: AffineRegistrar,
    elastix_log: _ElastixLog,
) -> CaseOutput:
    """Crop, align and resample one case onto the reference grid."""
    started = time.perf_counter()
    is_reference = files.id == reference.case.id
    case = reference.case if is_reference else load_case(files, settings.labels)
    if is_reference:
        box, source = reference.box, reference.box_source
        affine, metric, carry_metric = sitk.AffineTransform(3), float("nan"), float("nan")
    else:
        alignment = align_case(
            case, reference.target, registrar, settings.crop_margin_mm, elastix_log
        )
        box, source, affine = alignment.box, alignment.source, alignment.affine
        metric, carry_metric = alignment.final_metric, alignment.carry_metric
    image = resample_onto(case.image, reference.grid, affine)
    array = scale_intensities(
        sitk.GetArrayFromImage(image),
        settings.modality,
        settings.ct_window,
        settings.mri_percentiles,
        case.id,
    )
    label = label_crop_only = None
    if case.label is not None:
        label = sitk.GetArrayFromImage(
            resample_onto(case.label, reference.grid, affine, is_label=True)
        )
        own_grid = box_grid(case.image, box, settings.target_shape_xyz)
        label_crop_only = sitk.GetArrayFromImage(resample_onto(case.label, own_grid, is_label=True))
    seconds = time.perf_counter() - started
    log.info(
        "case %s: box %s + %s (%s), metric %.4f, %.1f s",
        case.id,
        box.start,
        box.size,
        source,
        metric,
        seconds,
    )
    return CaseOutput(
        case_id=case.id,
        subject=case.subject,
        box={"source": source, **box.to_json(case.image)},
        affine=affine,
        final_metric=metric,
        carry_metric=carry_metric,
        image=array,
        label=label,
        label_crop_only=label_crop_only,
        seconds=seconds,
    )


def _write_case_files(out: Path, output: CaseOutput, grid: sitk.Image) -> dict[str, Any]:
    """The arrays and their viewable NIfTI copies; returns the manifest entry."""
    entry = {"id": output.case_id, "subject": output.subject, "labelled": output.label is not None}
    arrays = {"image": output.image, "label": output.label}
    for kind, array in arrays.items():
        if array is None:
            entry[kind] = None
            continue
        relative = f"{kind}s/{output.case_id}.npy"
        with atomic_path(out / relative) as temporary, open(temporary, "wb") as handle:
            np.save(handle, array)
        viewable = sitk.GetImageFromArray(array)
        viewable.CopyInformation(grid)
        write_image(viewable, out / "nifti" / f"{output.case_id}_{kind}.nii.gz")
        entry[kind] = relative
    return entry


def _qc_table(outputs: Sequence[CaseOutput], n_classes: int, reference_id: str) -> str:
    """CSV text, one row per case: box, affine, elastix metrics and label overlap."""
    labelled = {o.case_id: o for o in outputs if o.label is not None}
    crop_only = mean_pairwise_dice({k: o.label_crop_only for k, o in labelled.items()}, n_classes)
    aligned = mean_pairwise_dice({k: o.label for k, o in labelled.items()}, n_classes)
    reference = labelled.get(reference_id)
    buffer = io.StringIO()
    columns = [
        "case",
        "subject",
        "labelled",
        "box_source",
        "box_start_xyz",
        "box_size_xyz",
        "affine_matrix",
        "affine_translation_mm",
        "affine_determinant",
        "elastix_final_metric",
        "carry_final_metric",
        "dice_pairwise_crop",
        "dice_pairwise_affine",
        "dice_reference_crop",
        "dice_reference_affine",
        "seconds",
    ]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for o in outputs:
        matrix = np.reshape(o.affine.GetMatrix(), (3, 3))
        row = {
            "case": o.case_id,
            "subject": o.subject,
            "labelled": o.label is not None,
            "box_source": o.box["source"],
            "box_start_xyz": " ".join(str(v) for v in o.box["start_xyz"]),
            "box_size_xyz": " ".join(str(v) for v in o.box["size_xyz"]),
            "affine_matrix": " ".join(f"{v:.5f}" for v in matrix.ravel()),
            "affine_translation_mm": " ".join(f"{v:.3f}" for v in o.affine.GetTranslation()),
            "affine_determinant": f"{np.linalg.det(matrix):.5f}",
            "elastix_final_metric": f"{o.final_metric:.5f}",
            "carry_final_metric": f"{o.carry_metric:.5f}",
            "dice_pairwise_crop": f"{crop_only.get(o.case_id, float('nan')):.4f}",
            "dice_pairwise_affine": f"{aligned.get(o.case_id, float('nan')):.4f}",
            "dice_reference_crop": "nan",
            "dice_reference_affine": "nan",
            "seconds": f"{o.seconds:.2f}",
        }
        if reference is not None and o.label is not None and o.case_id != reference_id:
            row["dice_reference_crop"] = (
                f"{mean_dice(o.label_crop_only, reference.label_crop_only, n_classes):.4f}"
            )
            row["dice_reference_affine"] = f"{mean_dice(o.label, reference.label, n_classes):.4f}"
        writer.writerow(row)
    return buffer.getvalue()


def check_cohort(cohort: Sequence[CaseFiles], labels: dict[str, int]) -> None:
    """Read and validate every case before the first registration.

    Cases are otherwise read one at a time deep into the run, so a broken file near the
    end of a large cohort would stop the step only after minutes of alignment.
    """
    started = time.perf_counter()
    for files in cohort:
        load_case(files, labels)
    log.info("checked %d cases in %.1f s", len(cohort), time.perf_counter() - started)


def preprocess_cohort(
    settings: PreprocessSettings,
    out: str | Path,
    threads: int = 1,
    elastix_log_path: str | Path | None = None,
    registrar: AffineRegistrar | None = None,
) -> dict[str, Any]:
    """Run the whole chain and return the manifest (also written, last, to ``out``).

    Pass ``registrar`` to reuse one that exists (its first creation costs 15-25 s).
    """
    out = Path(out)
    cohort = discover_cases(settings.data_dir, settings.layout, settings.subject_pattern)
    reference_files = choose_reference(cohort, settings.reference)
    check_cohort(cohort, settings.labels)
    elastix_log = _ElastixLog(Path(elastix_log_path) if elastix_log_path else None)
    log.info(
        "%d cases (%d labelled); reference %s",
        len(cohort),
        sum(c.label is not None for c in cohort),
        reference_files.id,
    )
    registrar = registrar or AffineRegistrar(threads=threads)
    reference = build_reference(reference_files, cohort, settings, registrar, elastix_log)
    outputs, entries = [], []
    progress = Progress(len(cohort), "preprocess", unit="case")
    for files in cohort:
        output = process_case(files, reference, settings, registrar, elastix_log)
        entries.append(_write_case_files(out, output, reference.grid))
        outputs.append(output)
        progress.update()
    progress.close()
    n_classes = len(settings.labels)
    qc = _qc_table(outputs, n_classes, reference.case.id)
    write_text(out / "qc.csv", qc)
    write_json(
        out / "crop_boxes.json",
        {
            "reference": reference.case.id,
            "margin_mm": settings.crop_margin_mm,
            "boxes": {o.case_id: o.box for o in outputs},
        },
    )
    write_mosaic(
        out / "mosaic.png",
        {o.case_id: o.image for o in outputs},
        {o.case_id: o.label for o in outputs},
        list(settings.labels),
        reference.case.id,
    )
    manifest = {
        "labels": {name: index for index, name in enumerate(settings.labels, start=1)},
        "target_shape_xyz": list(settings.target_shape_xyz),
        "spacing_xyz": [round(float(v), 6) for v in reference.grid.GetSpacing()],
        "reference": reference.case.id,
        "cases": entries,
    }
    write_plan(out, preprocess_plan(settings, reference.target))
    write_json(out / "manifest.json", manifest)
    _log_overlap(outputs, n_classes)
    return manifest


def _log_overlap(outputs: Sequence[CaseOutput], n_classes: int) -> None:
    labelled = [o for o in outputs if o.label is not None]
    if len(labelled) < 2:
        return
    before = mean_pairwise_dice({o.case_id: o.label_crop_only for o in labelled}, n_classes)
    after = mean_pairwise_dice({o.case_id: o.label for o in labelled}, n_classes)
    log.info(
        "mean pairwise label Dice of %d labelled cases: crop only %.3f, after affine %.3f",
        len(labelled),
        np.mean(list(before.values())),
        np.mean(list(after.values())),
    )


def _parse_labels(pairs: Sequence[str]) -> dict[str, int]:
    labels: dict[str, int] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if not name or not value.strip().isdigit():
            raise ConfigError(f"--labels entry '{pair}' must look like NAME=VALUE, e.g. lv=500")
        labels[name] = int(value)
    return labels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="workflow config (data and preprocess sections)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder, e.g. results/preprocessed"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads for elastix")
    parser.add_argument("--elastix-log", type=Path, help="file that collects elastix's logs")
    explicit = parser.add_argument_group("explicit settings (override the config)")
    explicit.add_argument("--data-dir", help="cohort folder")
    explicit.add_argument("--layout", choices=["mmwhs", "acdc"])
    explicit.add_argument("--modality", choices=["ct", "mri"])
    explicit.add_argument("--labels", nargs="+", metavar="NAME=VALUE", help="label table")
    explicit.add_argument("--reference", help="case id every case is aligned to, or auto")
    explicit.add_argument("--crop-margin-mm", type=float)
    explicit.add_argument("--target-shape", type=int, nargs=3, metavar=("X", "Y", "Z"))
    explicit.add_argument("--ct-window", type=float, nargs=2, metavar=("LOW", "HIGH"))
    explicit.add_argument("--mri-percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"))


def settings_from_arguments(args: argparse.Namespace) -> PreprocessSettings:
    """The config file (if any) with every explicit flag laid over it, validated."""
    if args.config is not None:
        config = load_config(args.config)
    elif args.data_dir is None or args.labels is None:
        raise ConfigError("give --config, or at least --data-dir and --labels")
    else:
        config = {"data": {"source": "folder", "dir": args.data_dir, "labels": {}}}
    data, preprocess = config["data"], config.setdefault("preprocess", {})
    overrides = {"dir": args.data_dir, "layout": args.layout, "modality": args.modality}
    data.update({key: value for key, value in overrides.items() if value is not None})
    if args.labels is not None:
        data["labels"] = _parse_labels(args.labels)
    flags = {
        "reference": args.reference,
        "crop_margin_mm": args.crop_margin_mm,
        "target_shape": args.target_shape,
        "ct_window": args.ct_window,
        "mri_percentiles": args.mri_percentiles,
    }
    preprocess.update({key: value for key, value in flags.items() if value is not None})
    return PreprocessSettings.from_config(validate_config(config))


def run(args: argparse.Namespace) -> int:
    settings = settings_from_arguments(args)
    manifest = preprocess_cohort(settings, args.out, args.threads, args.elastix_log)
    log.info("wrote %s (%d cases)", Path(args.out) / "manifest.json", len(manifest["cases"]))
    return 0
