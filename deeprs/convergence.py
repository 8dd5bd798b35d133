"""The convergence criterion of a training run, read from its ``validation.csv``.

A run has converged when the least-squares trend of its validation Dice over the last third
of training changes the Dice by less than :data:`TOLERANCE_POINTS` over that third. A trend
over every measurement of that third rather than the difference of two, so that the verdict
does not rest on the last point alone; it is still sensitive to one outlier early in the
window, and with few validation images its standard error (reported beside it, from the fit's
residuals) can be as large as the tolerance: a verdict whose change lies within about two
standard errors of the tolerance is within the noise of the measurement. It needs
:data:`MIN_POINTS` measurements in the last third (``train.validate_every`` at most a sixth
of ``train.iterations``), else it is undecided. Torch-free: the report reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deeprs.errors import DataError

TOLERANCE_POINTS = 1.0
"""Largest change of the validation Dice (in points, 0-100) over the last third that counts as flat."""

LAST_PART = 3
"""The criterion reads the last 1/LAST_PART of training."""
MIN_POINTS = 3
SIGNALS = {"s_dice": "S", "r_dice": "R"}
"""Columns of ``validation.csv`` and the network each measures."""
FOLDING = "r_folding_pct"
"""R's folding on the validation pairs (%): plotted beside the Dice, not part of the criterion
(files written before it existed lack it)."""


@dataclass(frozen=True)
class Convergence:
    """One signal of one run: its last value and its trend over the last third (points)."""

    signal: str
    final: float
    change: float
    change_se: float
    """Standard error of ``change`` (points), NaN with fewer than three measurements."""

    @property
    def converged(self) -> bool | None:
        """True/False, or None when too few measurements fall in the last third."""
        if np.isnan(self.change):
            return None
        return bool(abs(self.change) < TOLERANCE_POINTS)


def in_last_part(iterations: np.ndarray) -> np.ndarray:
    """Which of ``iterations`` fall in the criterion's window: the last 1/LAST_PART of them."""
    end = iterations.max()
    return iterations >= end - end / LAST_PART


def trend_over_last_third(iterations: np.ndarray, dice: np.ndarray) -> tuple[float, float]:
    """The trend's change of Dice (points) over the last third of the recorded iterations,
    and its standard error from the fit's residuals; NaN when undecided."""
    iterations = np.asarray(iterations, dtype=float)
    dice = np.asarray(dice, dtype=float)
    keep = ~np.isnan(dice)
    iterations, dice = iterations[keep], dice[keep]
    if iterations.size == 0:
        return float("nan"), float("nan")
    span = iterations.max() / LAST_PART
    last = in_last_part(iterations)
    x, y = iterations[last], dice[last]
    if x.size < MIN_POINTS:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (slope * x + intercept)
    spread = float(np.sum((x - x.mean()) ** 2))
    slope_se = float(np.sqrt(np.sum(residuals**2) / (x.size - 2) / spread))
    return float(slope * span * 100), slope_se * span * 100


def change_over_last_third(iterations: np.ndarray, dice: np.ndarray) -> float:
    """The trend's change of Dice (points) over the last third of the recorded iterations."""
    return trend_over_last_third(iterations, dice)[0]


def read_validation(path: Path) -> pd.DataFrame:
    """A run's ``validation.csv``, checked for the columns the criterion reads."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise DataError(
            f"validation file '{path}' cannot be read ({error}); rerun its training"
        ) from None
    missing = {"iteration", *SIGNALS} - set(frame.columns)
    if missing:
        raise DataError(
            f"validation file '{path}' lacks columns {sorted(missing)}; rerun its training"
        )
    return frame


def read_search_run(path: Path, search: str, target: str) -> pd.DataFrame:
    """One run of a search (``search`` names it) on the budget split; a missing one names the
    Snakemake ``target`` that trains it."""
    if not path.is_file():
        raise DataError(f"{search} run '{path}' is missing; run target '{target}'")
    return read_validation(path)


def assess(frame: pd.DataFrame) -> list[Convergence]:
    """The criterion for every signal the run measured (S and/or R)."""
    results = []
    for column in SIGNALS:
        values = frame[column].to_numpy(dtype=float)
        if np.isnan(values).all():
            continue
        final = float(values[~np.isnan(values)][-1])
        change, change_se = trend_over_last_third(frame["iteration"].to_numpy(), values)
        results.append(Convergence(column, final, change, change_se))
    return results
