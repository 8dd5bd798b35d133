"""Learning curves: the losses of one method over iterations, every fold in one figure.

Reads the ``losses.csv`` that training writes next to each model. One panel per recorded
term that is not zero throughout; each fold is a thin line (running mean over ~5 % of the
run) and the mean over folds a thick one, so a reader sees both whether training settled
and how much the folds agree. Columns other than the loss terms (e.g. a validation signal)
are drawn too, with their column name as the axis label.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from deeprs.errors import DataError  # noqa: E402
from deeprs.report.figures import save_figure  # noqa: E402
from deeprs.train.history import LOSS_TERMS  # noqa: E402

NOT_PLOTTED = ("iteration", "disc_lr_scale")
FOLD_STYLES = ("-", "--", ":", "-.")


def losses_path(results: Path, method: str, fold: int) -> Path:
    return Path(results) / method / f"fold_{fold}" / "losses.csv"


def read_losses(results: Path, method: str, folds: list[int]) -> dict[int, pd.DataFrame]:
    """The ``losses.csv`` of each fold that has one (absent folds are left out)."""
    runs = {}
    for fold in folds:
        path = losses_path(results, method, fold)
        if not path.is_file():
            continue
        try:
            frame = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise DataError(
                f"losses file '{path}' cannot be read ({error}); rerun its training"
            ) from None
        if "iteration" not in frame.columns:
            raise DataError(f"losses file '{path}' has no column 'iteration'; rerun its training")
        runs[fold] = frame
    return runs


def plotted_terms(runs: dict[int, pd.DataFrame]) -> list[str]:
    """Loss terms in LOSS_TERMS order, then other columns, that are non-zero in some fold."""
    columns = list(dict.fromkeys(column for frame in runs.values() for column in frame.columns))
    ordered = [term for term in LOSS_TERMS if term in columns]
    ordered += [column for column in columns if column not in LOSS_TERMS]
    return [
        term
        for term in ordered
        if term not in NOT_PLOTTED
        and any(
            term in frame and pd.to_numeric(frame[term], errors="coerce").fillna(0).abs().sum() > 0
            for frame in runs.values()
        )
    ]


def axis_label(term: str) -> str:
    return "loss (unweighted)" if term in LOSS_TERMS else term


def learning_curve_figure(
    runs: dict[int, pd.DataFrame], title: str, colour: str, out_path: Path
) -> Path:
    """One panel per plotted term; thin line per fold, thick line for the mean of folds."""
    terms = plotted_terms(runs)
    columns = max(1, min(3, len(terms)))
    rows = max(1, -(-len(terms) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.2 * rows), squeeze=False)
    for axis, term in zip(axes.flat, terms, strict=False):
        smoothed = []
        for index, (fold, frame) in enumerate(sorted(runs.items())):
            if term not in frame:
                continue
            values = pd.to_numeric(frame[term], errors="coerce")
            window = max(1, len(frame) // 20)
            smooth = pd.Series(
                values.rolling(window, min_periods=1).mean().to_numpy(),
                index=frame["iteration"].to_numpy(),
            )
            smoothed.append(smooth)
            axis.plot(
                smooth.index,
                smooth.to_numpy(),
                color=colour,
                alpha=0.7,
                linewidth=1.0,
                linestyle=FOLD_STYLES[index % len(FOLD_STYLES)],
                label=f"fold {fold}",
            )
        if len(smoothed) > 1:
            mean = pd.concat(smoothed, axis=1).mean(axis=1)
            axis.plot(mean.index, mean.to_numpy(), color="black", linewidth=1.8, label="mean")
        axis.set_title(LOSS_TERMS.get(term, term), fontsize=10)
        axis.set_xlabel("iteration")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(axis_label(term))
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(terms) :]:
        axis.axis("off")
    if terms:
        axes.flat[0].legend(fontsize=8, frameon=False)
    else:
        axes[0, 0].text(0.5, 0.5, "no losses recorded", ha="center", va="center")
        axes[0, 0].set_xlabel("iteration")
        axes[0, 0].set_ylabel("loss (unweighted)")
    figure.suptitle(title)
    figure.tight_layout()
    path = save_figure(figure, out_path)
    plt.close(figure)
    return path
