"""Learning curves: the losses and the validation Dice of one method, every fold in one figure.

Reads the ``losses.csv`` and ``validation.csv`` that training writes next to each model.
One panel per recorded loss term that is not zero throughout; each fold is a thin line
(running mean over ~5 % of the run) and the mean over folds a thick one, so a reader sees
both whether training settled and how much the folds agree. Then one panel per validation
signal (S Dice, R Dice), unsmoothed, titled with the convergence criterion
(:mod:`deeprs.convergence`) of the mean over folds. Columns other than the loss terms are
drawn too, with their column name as the axis label.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from deeprs.convergence import (  # noqa: E402
    FOLDING,
    SIGNALS,
    change_over_last_third,
    read_validation,
)
from deeprs.errors import DataError  # noqa: E402
from deeprs.report.figures import save_figure  # noqa: E402
from deeprs.terms import TERM_TITLES  # noqa: E402

NOT_PLOTTED = ("iteration", "disc_lr_scale")
# One line style per fold of the study's five (dash-dot-dot for the fifth), so that no two
# folds look alike without colour; more folds than styles cycle.
FOLD_STYLES = ("-", "--", ":", "-.", (0, (8, 2, 1, 2, 1, 2)))


def losses_path(results: Path, method: str, fold: int) -> Path:
    return Path(results) / method / f"fold_{fold}" / "losses.csv"


def validation_path(results: Path, method: str, fold: int) -> Path:
    return Path(results) / method / f"fold_{fold}" / "validation.csv"


def read_validations(results: Path, method: str, folds: list[int]) -> dict[int, pd.DataFrame]:
    """The ``validation.csv`` of each fold that has one with rows (absent folds are left out)."""
    runs = {}
    for fold in folds:
        path = validation_path(results, method, fold)
        if path.is_file():
            frame = read_validation(path)
            if len(frame):
                runs[fold] = frame
    return runs


def _validation_panels(validation: dict[int, pd.DataFrame]) -> list[str]:
    return [
        column
        for column in (*SIGNALS, FOLDING)
        if any(column in frame and frame[column].notna().any() for frame in validation.values())
    ]


def _plot_folds(
    axis: plt.Axes, curves: dict[int, pd.Series], colour: str, marker: str | None = None
) -> pd.Series:
    """A thin line per fold (style per fold) and, for several folds, their mean in black."""
    for index, (fold, curve) in enumerate(sorted(curves.items())):
        axis.plot(
            curve.index,
            curve.to_numpy(),
            color=colour,
            alpha=0.7,
            linewidth=1.0,
            marker=marker,
            linestyle=FOLD_STYLES[index % len(FOLD_STYLES)],
            label=f"fold {fold}",
        )
    mean = pd.concat(list(curves.values()), axis=1).mean(axis=1)
    if len(curves) > 1:
        axis.plot(mean.index, mean.to_numpy(), color="black", linewidth=1.8, label="mean")
    return mean


def _draw_validation(
    axis: plt.Axes, validation: dict[int, pd.DataFrame], column: str, colour: str
) -> None:
    """Each fold's validation Dice (%) and their mean, titled with the mean's criterion; or
    R's folding (%), which the criterion does not read."""
    scale = 1 if column == FOLDING else 100
    curves = {
        fold: pd.Series(frame[column].to_numpy(dtype=float) * scale, index=frame["iteration"])
        for fold, frame in validation.items()
        if column in frame
    }
    mean = _plot_folds(axis, curves, colour, marker=".")
    if column == FOLDING:
        axis.set_title("validation R folding (det J <= 0)", fontsize=10)
        axis.set_ylabel("voxels folded (%)")
        return
    change = change_over_last_third(mean.index.to_numpy(), mean.to_numpy() / 100)
    verdict = "undecided" if change != change else f"{change:+.1f} pts over last third"
    axis.set_title(f"validation {SIGNALS[column]} Dice ({verdict})", fontsize=10)
    axis.set_ylabel("Dice (%)")


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
    """Loss terms in TERM_TITLES order, then other columns, that are non-zero in some fold."""
    columns = list(dict.fromkeys(column for frame in runs.values() for column in frame.columns))
    ordered = [term for term in TERM_TITLES if term in columns]
    ordered += [column for column in columns if column not in TERM_TITLES]
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
    return "loss (unweighted)" if term in TERM_TITLES else term


def learning_curve_figure(
    runs: dict[int, pd.DataFrame],
    title: str,
    colour: str,
    out_path: Path,
    validation: dict[int, pd.DataFrame] | None = None,
) -> Path:
    """One panel per plotted term and validation signal; thin line per fold, thick line for
    the mean of folds."""
    terms = plotted_terms(runs)
    signals = _validation_panels(validation or {})
    panels = len(terms) + len(signals)
    columns = max(1, min(3, panels))
    rows = max(1, -(-panels // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.2 * rows), squeeze=False)
    for axis, column in zip(list(axes.flat)[len(terms) :], signals, strict=False):
        _draw_validation(axis, validation or {}, column, colour)
        axis.set_xlabel("iteration")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    for axis, term in zip(axes.flat, terms, strict=False):
        smoothed = {}
        for fold, frame in runs.items():
            if term not in frame:
                continue
            values = pd.to_numeric(frame[term], errors="coerce")
            window = max(1, len(frame) // 20)
            smoothed[fold] = pd.Series(
                values.rolling(window, min_periods=1).mean().to_numpy(),
                index=frame["iteration"].to_numpy(),
            )
        if smoothed:
            _plot_folds(axis, smoothed, colour)
        axis.set_title(TERM_TITLES.get(term, term), fontsize=10)
        axis.set_xlabel("iteration")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(axis_label(term))
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[panels:]:
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
