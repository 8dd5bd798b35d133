"""``deeprs report``: the tables, box plots, label-amount curve, learning curves and QC page.

Reads only ``metrics.csv``, ``losses.csv`` and ``validation.csv`` files and the
preprocessing QC (no models),
so it reruns in seconds when a metric changes. A method whose files are absent is reported
as missing, not dropped. The study's own report folder (``{results}/report``, written by
Snakemake's rule ``report``) is replaced only on request (``--replace-study-report``): a
report of a few methods or folds goes to ``{results}/report_subset`` or ``--out``.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from deeprs import convergence
from deeprs.errors import ConfigError
from deeprs.io import write_text
from deeprs.palette import method_colour, structure_title
from deeprs.report import curves, figures, qc, tables
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
    "(segmentation); per-structure cells are mean ± std of that structure over the same "
    "samples. S-Dice % (native): segmentation scored on each test image's own grid against "
    "its label file, as nnU-Net scores; every other figure is on the training grid. "
    f"p: two-sided paired {tables.TEST_NAME} test (scipy.stats.wilcoxon) of DeepRS "
    "against the row over the (fold, sample) pairs both have; 'DeepRS − row' is the mean "
    "paired difference. Paper figures: He et al., ECCV 2020, Tables 1 and 2."
)
TABLE1_TITLE = "Table 1: DeepRS against the baselines"
TABLE2_TITLE = "Table 2: ablation of DeepRS"

LABEL_AMOUNT_CAPTION = (
    "Each repeat trains on another random draw of the labelled images and is tested on the "
    "same fixed test images; its score is the mean over test images of the per-image Dice "
    "(mean over structures). Points: mean ± std (ddof=1) over repeats."
)
PER_FOLD_CAPTION = (
    "Mean ± std (ddof=1) of the per-sample Dice (mean over structures) within each fold: "
    "how much the folds differ."
)

CONVERGENCE_CAPTION = (
    "Validation Dice of each run (S on each validation image, R on each ordered pair of them; "
    "'validated on: training' means the split's own labelled training images, when the study "
    "sets no validation cases aside). A run has converged when the least-squares trend of its "
    f"validation Dice over the last third of training changes it by less than "
    f"{convergence.TOLERANCE_POINTS:g} Dice point (standard error of that change from the "
    "fit's residuals beside it: a verdict within about two standard errors of the tolerance "
    "is within the noise of the measurement); 'undecided': fewer than "
    f"{convergence.MIN_POINTS} measurements in that third. The final model is always the last "
    "iteration's."
)

STUDY_REPORT = "report"
"""The study's report folder inside the results folder (Snakemake's rule ``report``)."""
SUBSET_REPORT = "report_subset"
"""Default folder of a report run by hand, so that it never replaces the study's."""


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
    preprocessed: Path | None = None
    """Folder with the preprocessing's ``qc.csv`` and ``mosaic.png``; None: no QC page."""


def _log_missing(metrics: MetricsSet) -> None:
    for method, paths in metrics.missing.items():
        if paths:
            LOG.warning("%s: %d metrics file(s) missing, e.g. %s", method, len(paths), paths[0])


def write_comparison_tables(
    request: ReportRequest, metrics: MetricsSet, structures: list[str]
) -> list[Path]:
    """table1.* and table2.* from the fold metrics of both method lists."""
    written = []
    for stem, methods, paper, title, heading in (
        ("table1", request.methods, TABLE1, method_title, TABLE1_TITLE),
        ("table2", request.ablation, TABLE2, ablation_title, TABLE2_TITLE),
    ):
        summary = tables.summarise(metrics, methods, structures, paper, title, REFERENCE_METHOD)
        printed = tables.display_tables(summary, structures, structure_title, REFERENCE_METHOD)
        written += tables.write_table_files(
            summary, printed, request.out, stem, heading, SAMPLE_DEFINITION
        )
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
        table, request.label_amount_methods, method_title, request.out / "label_amount.png"
    )
    html_path = request.out / "label_amount.html"
    write_text(
        html_path,
        tables.to_html(
            tables.label_amount_tables(table, method_title),
            "Label-amount study (Fig. 8)",
            LABEL_AMOUNT_CAPTION,
        ),
    )
    return [csv_path, png_path, html_path]


def learning_curve_path(out: Path, method: str) -> Path:
    return Path(out) / f"learning_curves_{method}.png"


def write_learning_curves(request: ReportRequest, methods: list[str]) -> list[Path]:
    """learning_curves_{method}.png for every method with at least one ``losses.csv``."""
    written = []
    for method in methods:
        runs = curves.read_losses(request.results, method, request.folds)
        if not runs:
            continue
        folds = ", ".join(str(fold) for fold in sorted(runs))
        which = f"folds {folds}" if len(runs) > 1 else f"fold {folds}"
        written.append(
            curves.learning_curve_figure(
                runs,
                f"{method_title(method)}: training losses and validation Dice, {which}",
                method_colour(method, methods),
                learning_curve_path(request.out, method),
                curves.read_validations(request.results, method, request.folds),
            )
        )
    return written


def convergence_table(request: ReportRequest, methods: list[str]) -> pd.DataFrame:
    """The convergence criterion per method, fold and validation signal (S, R)."""
    rows = []
    for method in methods:
        for fold, frame in curves.read_validations(request.results, method, request.folds).items():
            for result in convergence.assess(frame):
                verdict = {True: "yes", False: "no", None: "undecided"}[result.converged]
                rows.append(
                    {
                        "method": method_title(method),
                        "fold": fold,
                        "network": convergence.SIGNALS[result.signal],
                        "validated on": str(frame["source"].iloc[0]),
                        "last iteration": int(frame["iteration"].iloc[-1]),
                        "final Dice (%)": round(result.final * 100, 1),
                        "change over last third (points)": round(result.change, 2),
                        "standard error (points)": round(result.change_se, 2),
                        "converged": verdict,
                    }
                )
    return pd.DataFrame(rows)


def write_convergence(request: ReportRequest, methods: list[str]) -> list[Path]:
    """convergence.csv and convergence.html: does every run meet the criterion?"""
    table = convergence_table(request, methods)
    csv_path = request.out / "convergence.csv"
    write_text(csv_path, table.to_csv(index=False))
    html_path = request.out / "convergence.html"
    printed = [tables.PrintedTable("convergence", "Convergence per run", table)]
    write_text(html_path, tables.to_html(printed, "Convergence of training", CONVERGENCE_CAPTION))
    return [csv_path, html_path]


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
    per_fold_html = request.out / "per_fold.html"
    write_text(
        per_fold_html,
        tables.to_html(
            tables.per_fold_tables(per_fold, method_title), "Dice per fold", PER_FOLD_CAPTION
        ),
    )
    written += [per_fold_path, per_fold_html]
    written += write_label_amount(request)
    written += write_learning_curves(request, all_methods)
    written += write_convergence(request, all_methods)
    if request.preprocessed is not None:
        written.append(qc.write_qc_page(request.preprocessed, request.out / "qc.html"))
    return written


def output_folder(results: Path, out: Path | None, replace_study_report: bool) -> Path:
    """``out``, or ``{results}/report_subset``; the study's folder only when asked to."""
    folder = Path(out) if out is not None else Path(results) / SUBSET_REPORT
    study = Path(results) / STUDY_REPORT
    if folder.resolve() == study.resolve() and not replace_study_report:
        raise ConfigError(
            f"--out '{folder}' is the study's report, which Snakemake's rule `report` writes; "
            "pick another --out (default: "
            f"{Path(results) / SUBSET_REPORT}) or pass --replace-study-report"
        )
    return folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output folder (default: RESULTS/{SUBSET_REPORT}; never RESULTS/{STUDY_REPORT} "
        "unless --replace-study-report)",
    )
    parser.add_argument(
        "--replace-study-report",
        action="store_true",
        help=f"allow --out RESULTS/{STUDY_REPORT}, the study's report (Snakemake's rule does)",
    )
    parser.add_argument("--methods", nargs="+", required=True, help="Table 1 rows, in order")
    parser.add_argument("--ablation", nargs="*", default=[], help="Table 2 rows, in order")
    parser.add_argument("--folds", nargs="+", type=int, required=True, help="fold numbers")
    parser.add_argument(
        "--structures", nargs="*", default=[], help="structure order (data.labels keys)"
    )
    parser.add_argument("--label-amount-methods", nargs="*", default=[])
    parser.add_argument("--label-amounts", nargs="*", type=int, default=[])
    parser.add_argument("--repeats", type=int, default=0, help="repeats per label amount")
    parser.add_argument(
        "--preprocessed",
        type=Path,
        default=None,
        help="preprocessing folder with qc.csv and mosaic.png: also write qc.html",
    )


def run(args: argparse.Namespace) -> int:
    request = ReportRequest(
        results=args.results,
        out=output_folder(args.results, args.out, args.replace_study_report),
        methods=args.methods,
        ablation=args.ablation,
        folds=args.folds,
        structures=args.structures,
        label_amount_methods=args.label_amount_methods,
        label_amounts=args.label_amounts,
        repeats=args.repeats,
        preprocessed=args.preprocessed,
    )
    written = build_report(request)
    LOG.info("wrote %d files to %s", len(written), request.out)
    return 0
