"""Quality control of the preprocessing: label overlap before and after alignment, affine
figures and flags per case, in ``qc.csv``.

All overlaps are measured on the training grid, i.e. in the reference's physical frame:
"crop only" places each case by its heart box's centre (a translation, no rotation or
scaling), "affine" through its alignment. The mean Dice of all pairs of labelled cases
after affine is the paper's "Affine only" baseline.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from deeprs.preprocess.case import CaseOutput

log = logging.getLogger(__name__)

# A case whose similarity to the reference (normalised mutual information, 1 = unrelated)
# lies this many robust standard deviations (1.4826 x median absolute deviation) below the
# cohort's median, and at least OUTLIER_MIN_FRACTION of the median's excess over 1, is flagged.
OUTLIER_DEVIATIONS = 4.0
OUTLIER_MIN_FRACTION = 0.2

COLUMNS = [
    "case",
    "subject",
    "labelled",
    "box_source",
    "box_start_xyz",
    "box_size_xyz",
    "start",
    "affine_matrix",
    "affine_translation_mm",
    "affine_determinant",
    "affine_scales",
    "affine_rotation_deg",
    "elastix_final_metric",
    "similarity",
    "starts_tried",
    "carry_final_metric",
    "dice_pairwise_crop",
    "dice_pairwise_affine",
    "dice_reference_crop",
    "dice_reference_affine",
    "flags",
    "seconds",
]


def mean_dice(first: np.ndarray, second: np.ndarray, n_classes: int) -> float:
    """Mean Dice over classes 1..n_classes present in either map (NaN if none is)."""
    scores = []
    for cls in range(1, n_classes + 1):
        a, b = first == cls, second == cls
        total = int(a.sum()) + int(b.sum())
        if total:
            scores.append(2.0 * np.logical_and(a, b).sum() / total)
    return float(np.mean(scores)) if scores else float("nan")


def mean_pairwise_dice(labels: Mapping[str, np.ndarray], n_classes: int) -> dict[str, float]:
    """For each case, its mean Dice to every other case (labels on one shared grid)."""
    ids = list(labels)
    scores: dict[str, list[float]] = {case: [] for case in ids}
    for i, first in enumerate(ids):
        for second in ids[i + 1 :]:
            score = mean_dice(labels[first], labels[second], n_classes)
            scores[first].append(score)
            scores[second].append(score)
    return {
        case: float(np.nanmean(values)) if values else float("nan")
        for case, values in scores.items()
    }


def consensus_label(labels: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Per voxel the class (background included) most of the label maps give it."""
    votes = np.stack(
        [np.stack([label == cls for label in labels]).sum(axis=0) for cls in range(n_classes + 1)]
    )
    return np.argmax(votes, axis=0).astype(np.uint8)


def similarity_outliers(outputs: Sequence[CaseOutput]) -> dict[str, str]:
    """Cases whose similarity to the reference is far below the cohort's, with the figure."""
    scores = {o.case_id: o.alignment.similarity for o in outputs if o.alignment is not None}
    if len(scores) < 4:
        return {}
    values = np.asarray(list(scores.values()))
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    threshold = median - max(OUTLIER_DEVIATIONS * spread, OUTLIER_MIN_FRACTION * (median - 1))
    return {
        case: f"similarity {score:.4f} far below the cohort's median {median:.4f}"
        for case, score in scores.items()
        if score < threshold
    }


def _numbers(values: Sequence[float], digits: int) -> str:
    return " ".join(f"{v:.{digits}f}" for v in values)


def qc_table(outputs: Sequence[CaseOutput], n_classes: int, reference_id: str) -> str:
    """CSV text, one row per case: box, affine figures, similarity, overlap and flags."""
    labelled = {o.case_id: o for o in outputs if o.label is not None}
    crop_only = mean_pairwise_dice({k: o.label_crop_only for k, o in labelled.items()}, n_classes)
    aligned = mean_pairwise_dice({k: o.label for k, o in labelled.items()}, n_classes)
    reference = labelled.get(reference_id)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    nan = float("nan")
    for o in outputs:
        transform, a = o.transform, o.alignment
        matrix = np.reshape(transform.GetMatrix(), (3, 3))
        row = {
            "case": o.case_id,
            "subject": o.subject,
            "labelled": o.label is not None,
            "box_source": o.box["source"],
            "box_start_xyz": " ".join(str(v) for v in o.box["start_xyz"]),
            "box_size_xyz": " ".join(str(v) for v in o.box["size_xyz"]),
            "start": a.start if a else "reference",
            "affine_matrix": _numbers(matrix.ravel(), 5),
            "affine_translation_mm": _numbers(transform.GetTranslation(), 3),
            "affine_determinant": f"{np.linalg.det(matrix):.5f}",
            "affine_scales": _numbers(a.figures.scales if a else (1.0, 1.0, 1.0), 4),
            "affine_rotation_deg": f"{a.figures.rotation_degrees if a else 0.0:.2f}",
            "elastix_final_metric": f"{a.elastix_metric if a else nan:.5f}",
            "similarity": f"{a.similarity if a else nan:.5f}",
            "starts_tried": "; ".join(a.tried) if a else "",
            "carry_final_metric": f"{o.carry.elastix_metric if o.carry else nan:.5f}",
            "dice_pairwise_crop": f"{crop_only.get(o.case_id, nan):.4f}",
            "dice_pairwise_affine": f"{aligned.get(o.case_id, nan):.4f}",
            "dice_reference_crop": "nan",
            "dice_reference_affine": "nan",
            "flags": "; ".join(o.flags),
            "seconds": f"{o.seconds:.2f}",
        }
        if reference is not None and o.label is not None and o.case_id != reference_id:
            row["dice_reference_crop"] = (
                f"{mean_dice(o.label_crop_only, reference.label_crop_only, n_classes):.4f}"
            )
            row["dice_reference_affine"] = f"{mean_dice(o.label, reference.label, n_classes):.4f}"
        writer.writerow(row)
    return buffer.getvalue()


def log_overlap(outputs: Sequence[CaseOutput], n_classes: int) -> None:
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
