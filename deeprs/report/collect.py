"""Read the evaluation's ``metrics.csv`` files and reduce them to per-sample scores.

A *sample* is one test pair (registration, ``moving->fixed``) or one test image
(segmentation) of one fold. Its score is the mean over structures of the per-structure
values (structures absent from both masks, NaN, are skipped). The tables then give mean ±
std over all samples of all folds, which is how we read the paper's "mean ± std".

Missing files are not errors here: they are returned so that the report can show the
method as missing instead of dropping it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from deeprs.errors import DataError
from deeprs.evaluate import METRICS_COLUMNS

TASKS = ("registration", "segmentation")
"""The tasks scored on the training grid: the paper's, and those every table compares."""
TASK_PREFIX = {"registration": "R", "segmentation": "S"}
NATIVE_TASK = "segmentation_native"
"""Segmentation scored on each test image's own grid (Table 1's "S-Dice % (native)")."""
KNOWN_TASKS = (*TASKS, NATIVE_TASK)


def fold_metrics_path(results: Path, method: str, fold: int) -> Path:
    return Path(results) / method / f"fold_{fold}" / "metrics.csv"


def label_amount_metrics_path(results: Path, method: str, n_labels: int, repeat: int) -> Path:
    return (
        Path(results) / "label_amount" / method / f"labels_{n_labels}_rep_{repeat}" / "metrics.csv"
    )


def read_metrics(path: Path, method: str) -> pd.DataFrame:
    """One metrics file, checked against the contract of docs/architecture.md."""
    try:
        frame = pd.read_csv(path, dtype={"fold": str, "sample": str, "structure": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(
            f"metrics file '{path}' cannot be read ({error}); rerun its evaluation"
        ) from None
    missing = [column for column in METRICS_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(
            f"metrics file '{path}' lacks the columns {', '.join(missing)}; "
            "rerun `deeprs evaluate` to rewrite it"
        )
    unknown_tasks = sorted(set(frame["task"]) - set(KNOWN_TASKS))
    if unknown_tasks:
        raise DataError(
            f"metrics file '{path}' has unknown tasks {', '.join(map(str, unknown_tasks))}; "
            f"the column 'task' takes {', '.join(KNOWN_TASKS)}"
        )
    other_methods = sorted(set(frame["method"].astype(str)) - {method})
    if other_methods:
        raise DataError(
            f"metrics file '{path}' holds rows of method {other_methods[0]!r} "
            f"but sits in the folder of {method!r}; rerun its evaluation"
        )
    frame = frame.loc[:, list(METRICS_COLUMNS)].copy()
    frame["method"] = method
    for column in ("dice", "hd95_mm", "nonpositive_jacobian_pct"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


@dataclass
class MetricsSet:
    """The rows read for a list of methods, and which of the expected files were absent."""

    frame: pd.DataFrame
    expected: dict[str, int] = field(default_factory=dict)
    missing: dict[str, list[Path]] = field(default_factory=dict)

    def status(self, method: str) -> str:
        """``ok``, ``missing`` or ``partial: k of n files`` for one method."""
        expected = self.expected.get(method, 0)
        absent = len(self.missing.get(method, []))
        if expected == 0 or absent == expected:
            return "missing"
        if absent:
            return f"partial: {expected - absent} of {expected} files"
        return "ok"


def _empty_metrics() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in METRICS_COLUMNS})


def _gather(files: dict[str, list[tuple[Path, dict[str, int]]]]) -> MetricsSet:
    frames: list[pd.DataFrame] = []
    metrics = MetricsSet(frame=_empty_metrics())
    for method, entries in files.items():
        metrics.expected[method] = len(entries)
        metrics.missing[method] = []
        for path, extra_columns in entries:
            if not path.is_file():
                metrics.missing[method].append(path)
                continue
            frame = read_metrics(path, method)
            for column, value in extra_columns.items():
                frame[column] = value
            frames.append(frame)
    if frames:
        metrics.frame = pd.concat(frames, ignore_index=True)
    return metrics


def collect_folds(results: Path, methods: list[str], folds: list[int]) -> MetricsSet:
    """Every ``results/{method}/fold_{k}/metrics.csv`` of the given methods and folds."""
    unique_methods = list(dict.fromkeys(methods))
    return _gather(
        {
            method: [(fold_metrics_path(results, method, fold), {}) for fold in folds]
            for method in unique_methods
        }
    )


def collect_label_amounts(
    results: Path, methods: list[str], label_amounts: list[int], repeats: int
) -> MetricsSet:
    """The label-amount study's files, with ``n_labels`` and ``repeat`` columns added."""
    return _gather(
        {
            method: [
                (
                    label_amount_metrics_path(results, method, n_labels, repeat),
                    {"n_labels": n_labels, "repeat": repeat},
                )
                for n_labels in label_amounts
                for repeat in range(repeats)
            ]
            for method in dict.fromkeys(methods)
        }
    )


def sample_scores(frame: pd.DataFrame, keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per (method, fold, task, sample): means over structures, NaN skipped.

    ``dice`` stays in [0, 1]; ``nonpositive_jacobian_pct`` is the same on every row of a
    sample, so its mean is that value.
    """
    group = ["method", *keys, "fold", "task", "sample"]
    values = ["dice", "hd95_mm", "nonpositive_jacobian_pct"]
    if frame.empty:
        return pd.DataFrame(columns=[*group, *values])
    return frame.groupby(group, sort=False, dropna=False)[values].mean().reset_index()


def structure_order(frame: pd.DataFrame, configured: list[str] | None) -> list[str]:
    """The configured structure order, else the order in which structures first appear."""
    seen = list(dict.fromkeys(frame["structure"].astype(str))) if not frame.empty else []
    if not configured:
        return seen
    return list(configured) + [name for name in seen if name not in configured]
