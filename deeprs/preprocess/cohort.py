"""``preprocess_cohort``: every case of a cohort onto one training grid, then QC and plan.

Order of work (the reasons are in docs/methods.md, section "Preprocessing"):

1. Check every case (readable, 3-D, finite, label on the image's grid with known values
   and not empty) and report every bad case at once, before any registration.
2. Choose the reference and build its heart box and the training grid
   (:mod:`deeprs.preprocess.reference`, :mod:`deeprs.preprocess.space`).
3. For every case, one at a time (memory stays at one raw volume): crop, align from
   several starts, resample (:mod:`deeprs.preprocess.case`); its files are written at once.
4. Cases whose similarity to the reference is far below the cohort's are aligned again
   from more starts; those still low are flagged.
5. ``qc.csv``, ``crop_boxes.json``, ``mosaic.png``, ``plan.json``, and ``manifest.json`` last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from deeprs.data.ingest import CaseFiles, discover_cases, load_case
from deeprs.errors import DataError
from deeprs.io import write_json, write_text
from deeprs.preprocess.affine import AffineRegistrar, ElastixLog
from deeprs.preprocess.case import CaseOutput, process_case
from deeprs.preprocess.outputs import transform_file, write_case_files
from deeprs.preprocess.plan import preprocess_plan, write_plan
from deeprs.preprocess.qc import consensus_label, log_overlap, qc_table, similarity_outliers
from deeprs.preprocess.qc_mosaic import write_qc_mosaic
from deeprs.preprocess.reference import Reference, build_reference, choose_reference
from deeprs.preprocess.settings import PreprocessSettings
from deeprs.preprocess.space import slice_axis_warning

log = logging.getLogger(__name__)


def check_case(files: CaseFiles, labels: dict[str, int]) -> None:
    """Every per-case check: readable, 3-D, finite, label grid and values, label not empty."""
    case = load_case(files, labels)
    if case.label is not None and not sitk.GetArrayViewFromImage(case.label).any():
        raise DataError(
            f"label '{files.label}' is empty (no structure of data.labels in it); "
            "fix it or remove it to treat the case as unlabelled"
        )


def check_cohort(cohort: Sequence[CaseFiles], labels: dict[str, int]) -> None:
    """Run :func:`check_case` on every case and report every bad case in one error.

    Cases are otherwise read one at a time deep into the run, so a broken file near the
    end of a large cohort would stop the step only after minutes of alignment.
    """
    started = time.perf_counter()
    problems = []
    for files in cohort:
        try:
            check_case(files, labels)
        except DataError as error:
            problems.append(str(error))
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        listed = " ".join(f"[{n}] {problem}" for n, problem in enumerate(problems, start=1))
        raise DataError(
            f"{len(problems)} of {len(cohort)} cases failed the checks; fix them all, then "
            f"rerun: {listed}"
        )
    log.info("checked %d cases in %.1f s", len(cohort), time.perf_counter() - started)


def _realign_outliers(
    outputs: list[CaseOutput],
    cohort: Sequence[CaseFiles],
    reference: Reference,
    settings: PreprocessSettings,
    registrar: AffineRegistrar,
    elastix_log: ElastixLog,
    out: Path,
) -> list[str]:
    """Align low-similarity cases again from more starts; returns the cases still flagged."""
    by_id = {files.id: files for files in cohort}
    still_flagged = []
    for case_id, reason in similarity_outliers(outputs).items():
        log.warning("case %s: %s; aligning again from more starts", case_id, reason)
        index = next(i for i, o in enumerate(outputs) if o.case_id == case_id)
        case = load_case(by_id[case_id], settings.labels)
        retry = process_case(case, reference, settings, registrar, elastix_log, more_starts=True)
        old = outputs[index]
        if retry.alignment.similarity > old.alignment.similarity:
            retry.flags.insert(
                0, f"{reason}; re-aligned from more starts, now {retry.alignment.similarity:.4f}"
            )
            outputs[index] = retry
            write_case_files(out, retry, reference.grid)
        else:
            old.flags.insert(0, f"{reason}; more starts did not help")
    for case_id, reason in similarity_outliers(outputs).items():
        log.warning("case %s: still %s after re-alignment", case_id, reason)
        still_flagged.append(case_id)
    return still_flagged


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
    elastix_log = ElastixLog(Path(elastix_log_path) if elastix_log_path else None)
    log.info(
        "%d cases (%d labelled); reference %s",
        len(cohort),
        sum(c.label is not None for c in cohort),
        reference_files.id,
    )
    registrar = registrar or AffineRegistrar(threads=threads)
    reference = build_reference(reference_files, cohort, settings, registrar, elastix_log)
    warning = slice_axis_warning(
        reference.space,
        reference.case.image.GetSpacing(),
        reference.case.image.GetDirection(),
        f"config key 'preprocess.target_shape' {list(settings.target_shape_xyz)}",
    )
    if warning:
        log.warning(warning)
    outputs: list[CaseOutput] = []
    for files in cohort:
        case = (
            reference.case if files.id == reference.case.id else load_case(files, settings.labels)
        )
        output = process_case(case, reference, settings, registrar, elastix_log)
        write_case_files(out, output, reference.grid)
        outputs.append(output)
    flagged = _realign_outliers(outputs, cohort, reference, settings, registrar, elastix_log, out)
    flagged += [o.case_id for o in outputs if o.flags and o.case_id not in flagged]
    n_classes = len(settings.labels)
    write_text(out / "qc.csv", qc_table(outputs, n_classes, reference.case.id))
    write_json(
        out / "crop_boxes.json",
        {
            "reference": reference.case.id,
            "margin_mm": settings.crop_margin_mm,
            "boxes": {o.case_id: o.box for o in outputs},
        },
    )
    contour, contour_source = _mosaic_contours(outputs, reference.case.id, n_classes)
    write_qc_mosaic(
        out / "mosaic.png",
        outputs,
        reference.case.id,
        contour,
        contour_source,
        reference.space.spacing_xyz,
        list(settings.labels),
        flagged,
    )
    write_plan(out, preprocess_plan(settings, reference.target))
    sources = {files.id: files for files in cohort}
    manifest = {
        "labels": {name: index for index, name in enumerate(settings.labels, start=1)},
        "label_values": dict(settings.labels),
        "target_shape_xyz": list(settings.target_shape_xyz),
        "spacing_xyz": [round(float(v), 6) for v in reference.space.spacing_xyz],
        "target_space": reference.space.to_json(),
        "reference": reference.case.id,
        "flagged": sorted(set(flagged)),
        "cases": [_manifest_entry(o, sources[o.case_id]) for o in outputs],
    }
    write_json(out / "manifest.json", manifest)
    log_overlap(outputs, n_classes)
    if flagged:
        log.warning("%d flagged case(s), see qc.csv's flags: %s", len(flagged), ", ".join(flagged))
    return manifest


def _mosaic_contours(
    outputs: Sequence[CaseOutput], reference_id: str, n_classes: int
) -> tuple[np.ndarray | None, str]:
    """The reference's label, or the consensus of the aligned labels when it has none."""
    reference = next(o for o in outputs if o.case_id == reference_id)
    if reference.label is not None:
        return reference.label, "contours: the reference's label"
    labels = [o.label for o in outputs if o.label is not None]
    if not labels:
        return None, "no label to draw"
    return (
        consensus_label(labels, n_classes),
        f"contours: consensus of the {len(labels)} aligned labelled cases",
    )


def _manifest_entry(output: CaseOutput, files: CaseFiles) -> dict[str, Any]:
    """Arrays and transform relative to the manifest's folder; the source files as found
    (relative to the working directory when ``data.dir`` is)."""
    return {
        "id": output.case_id,
        "subject": output.subject,
        "labelled": output.label is not None,
        "image": f"images/{output.case_id}.npy",
        "label": f"labels/{output.case_id}.npy" if output.label is not None else None,
        "transform": transform_file(output.case_id),
        "source_image": str(files.image),
        "source_label": str(files.label) if files.label is not None else None,
    }
