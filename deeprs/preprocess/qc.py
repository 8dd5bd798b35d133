"""Quality control of the preprocessing: label overlap before and after affine, and a mosaic.

Overlap is measured on the training arrays themselves (same target grid for every case),
which is what the networks see: "crop only" arrays are each case's own box resampled to
the target shape, "affine" arrays are the cases aligned to the reference. The mean Dice of
all pairs of labelled cases after affine is the paper's "Affine only" baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deeprs.io import atomic_path  # noqa: E402
from deeprs.palette import structure_colours  # noqa: E402


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


def write_mosaic(
    path: str | Path,
    images: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray | None],
    structure_names: Sequence[str],
    reference: str,
    columns: int = 10,
) -> None:
    """A mid axial slice of each aligned case with its label contours, reference first.

    Arrays are LPS (z, y, x): row 0 is anterior and column 0 the patient's right, so the
    default top-left origin shows the radiological view (anterior up, patient's left on
    the right of the picture).
    """
    ids = [reference] + [case for case in images if case != reference]
    rows = -(-len(ids) // columns)
    columns = min(columns, len(ids))
    figure, axes = plt.subplots(
        rows, columns, figsize=(1.6 * columns, 1.75 * rows + 0.4), squeeze=False
    )
    colours = structure_colours(list(structure_names))
    for axis in axes.ravel():
        axis.axis("off")
    for axis, case in zip(axes.ravel(), ids, strict=False):
        image = images[case]
        middle = image.shape[0] // 2
        axis.imshow(image[middle], cmap="gray", vmin=0, vmax=1)
        label = labels.get(case)
        if label is not None:
            for cls in range(1, len(structure_names) + 1):
                mask = label[middle] == cls
                if mask.any() and not mask.all():
                    axis.contour(
                        mask,
                        levels=[0.5],
                        colors=[colours[cls - 1]],
                        linewidths=0.6,
                    )
        title = f"{case}{' (ref)' if case == reference else ''}"
        axis.set_title(title, fontsize=5)
    handles = [
        plt.Line2D([], [], color=colours[i], label=name) for i, name in enumerate(structure_names)
    ]
    figure.legend(
        handles=handles, loc="lower center", ncol=len(structure_names), fontsize=6, frameon=False
    )
    figure.suptitle("Aligned cases: mid axial slice, label contours", fontsize=8)
    figure.tight_layout(rect=(0, 0.03, 1, 0.97))
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
