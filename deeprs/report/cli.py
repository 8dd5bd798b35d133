"""``deeprs report``: the tables, box plots, label-amount curve and per-fold table.

Reads only ``metrics.csv`` files (no models, no torch), so it reruns in seconds when a
metric changes. A method whose files are absent is reported as missing, not dropped.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from deeprs.io import write_text
from deeprs.palette import structure_title
from deeprs.report import figures, tables
from deeprs.report.collect import (
    MetricsSet,
    collect_folds,
    collect_label_amounts,
    sample_scores,
    structure_order,
)
from deeprs.report.paper import (
    REFERENCE_METHOD,
    TABLE1,
    TABLE2,
    ablation_title,
    method_title,
)

LOG = logging.getLogger(__name__)

SAMPLE_DEFINITION = (
    "Dice in % as mean ± std (ddof=1) over all test samples of all folds, a sample being "
    "the mean over structures of one test pair (registration) or one test image "
    "(segmentation); per-structure columns are means; p: two-sided paired Wilcoxon "
    "signed-rank test of DeepRS against the row over the same (fold, sample) pairs."
)
TABLE1_CAPTION = (
    f"Table 1: comparison with the baselines, beside the paper's figures. {SAMPLE_DEFINITION}"
)
TABLE2_CAPTION = f"Table 2: ablation of DeepRS, beside the paper's figures. {SAMPLE_DEFINITION}"


@dataclass
class ReportRequest:
    """What to report: the config's method lists, folds and label-amount design."""

    results: Path
    out: Path
    methods: list[str]
    ablation: list[str]
    folds: list[int]
    structures: list[str] = field(default_factory=list)
    label_amount_methods: list[str] = field(default_factory=list)
    label_amounts: list[int] = field(default_factory=list)
    repeats: int = 0


def _log_missing(metrics: MetricsSet) -> None:
    for method, paths in metrics.missing.items():
        if paths:
            LOG.warning("%s: %d metrics file(s) missing, e.g. %s", method, len(paths), paths[0])


def write_comparison_tables(
    request: ReportRequest, metrics: MetricsSet, structures: list[str]
) -> list[Path]:
    """table1.* and table2.* from the fold metrics of both method lists."""
    written = []
    for stem, methods, paper, title, caption in (
        ("table1", request.methods, TABLE1, method_title, TABLE1_CAPTION),
        ("table2", request.ablation, TABLE2, ablation_title, TABLE2_CAPTION),
    ):
        summary = tables.summarise(metrics, methods, structures, paper, title, REFERENCE_METHOD)
        display = tables.display_table(summary, structures, structure_title, REFERENCE_METHOD)
        written += tables.write_table_files(summary, display, request.out, stem, caption)
    return written


def write_label_amount(request: ReportRequest) -> list[Path]:
    """label_amount.csv and label_amount.png (Fig. 8)."""
    metrics = collect_label_amounts(
        request.results, request.label_amount_methods, request.label_amounts, request.repeats
    )
    _log_missing(metrics)
    samples = sample_scores(metrics.frame, keys=("n_labels", "repeat"))
    expected = pd.DataFrame(
        [
            {"method": method, "n_labels": n_labels, "repeat": repeat}
            for method in dict.fromkeys(request.label_amount_methods)
            for n_labels in request.label_amounts
            for repeat in range(request.repeats)
        ],
        columns=["method", "n_labels", "repeat"],
    )
    table = figures.label_amount_table(samples, expected)
    csv_path = request.out / "label_amount.csv"
    write_text(csv_path, table.to_csv(index=False, float_format="%.10g"))
    png_path = figures.label_amount_plot(
        samples, request.label_amount_methods, method_title, request.out / "label_amount.png"
    )
    return [csv_path, png_path]


def build_report(request: ReportRequest) -> list[Path]:
    """Every metrics-only output of the report; returns the files written."""
    all_methods = list(dict.fromkeys([*request.methods, *request.ablation]))
    metrics = collect_folds(request.results, all_methods, request.folds)
    _log_missing(metrics)
    structures = structure_order(metrics.frame, request.structures)
    written = write_comparison_tables(request, metrics, structures)
    for task in ("registration", "segmentation"):
        written += figures.boxplot_dice(
            metrics.frame,
            task,
            request.methods,
            structures,
            method_title,
            structure_title,
            request.out / f"boxplot_{task}",
        )
    per_fold_path = request.out / "per_fold.csv"
    per_fold = tables.per_fold(metrics, all_methods)
    write_text(per_fold_path, per_fold.to_csv(index=False, float_format="%.10g"))
    written.append(per_fold_path)
    written += write_label_amount(request)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    parser.add_argument("--out", type=Path, default=Path("results/report"), help="output folder")
    parser.add_argument("--methods", nargs="+", required=True, help="Table 1 rows, in order")
    parser.add_argument("--ablation", nargs="*", default=[], help="Table 2 rows, in order")
    parser.add_argument("--folds", nargs="+", type=int, required=True, help="fold numbers")
    parser.add_argument(
        "--structures", nargs="*", default=[], help="structure order (data.labels keys)"
    )
    parser.add_argument("--label-amount-methods", nargs="*", default=[])
    parser.add_argument("--label-amounts", nargs="*", type=int, default=[])
    parser.add_argument("--repeats", type=int, default=0, help="repeats per label amount")


def run(args: argparse.Namespace) -> int:
    request = ReportRequest(
        results=args.results,
        out=args.out,
        methods=args.methods,
        ablation=args.ablation,
        folds=args.folds,
        structures=args.structures,
        label_amount_methods=args.label_amount_methods,
        label_amounts=args.label_amounts,
        repeats=args.repeats,
    )
    written = build_report(request)
    LOG.info("wrote %d files to %s", len(written), request.out)
    return 0
