"""The per-iteration loss record of a training run: ``losses.csv`` and ``losses.png``.

Every run writes the same columns (``COLUMNS``) whatever the method, with 0 for terms
the method does not compute, so runs can be compared column by column.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from deeprs.io import atomic_path
from deeprs.terms import TERM_TITLES

COLUMNS = ["iteration", *TERM_TITLES, "disc_lr_scale"]
"""The loss terms of :mod:`deeprs.terms` (unweighted values), between the iteration and D's
rate scale."""


def empty_row(iteration: int) -> dict[str, float]:
    row: dict[str, float] = {"iteration": float(iteration)}
    row.update({term: 0.0 for term in TERM_TITLES})
    row["disc_lr_scale"] = 0.0
    return row


def write_losses_csv(history: list[dict[str, float]], path: Path) -> None:
    frame = pd.DataFrame(history, columns=COLUMNS).astype(float)
    frame["iteration"] = frame["iteration"].astype(int)
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)


def plot_losses(history: list[dict[str, float]], path: Path, title: str) -> None:
    """One panel per active loss term: raw values and a running mean over ~5% of the run."""
    # matplotlib only here: training itself (and the GPU check) runs without it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(history, columns=COLUMNS)
    active = [term for term in TERM_TITLES if len(frame) and frame[term].abs().sum() > 0]
    columns = max(1, min(3, len(active)))
    rows = max(1, -(-len(active) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    window = max(1, len(frame) // 20)
    for axis, term in zip(axes.flat, active, strict=False):
        axis.plot(
            frame["iteration"], frame[term], color="0.75", linewidth=0.8, label="per iteration"
        )
        smooth = frame[term].rolling(window, min_periods=1).mean()
        axis.plot(frame["iteration"], smooth, color="C3", linewidth=1.5, label=f"mean of {window}")
        axis.set_title(TERM_TITLES[term], fontsize=9)
        axis.set_xlabel("iteration")
        axis.set_ylabel("loss (unweighted)")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(active) :]:
        axis.axis("off")
    if not active:
        axes[0, 0].text(0.5, 0.5, "no training (no loss terms)", ha="center", va="center")
    else:
        axes.flat[0].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
