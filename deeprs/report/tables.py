"""The comparison (Table 1) and ablation (Table 2) tables, beside the paper's figures.

Statistics (also in the captions and docs/methods.md):
- Dice of a sample = mean over structures of that test pair / test image; a table cell is
  mean ± std (``ddof=1``) over all samples of all folds, in %.
- Per-structure columns: mean Dice of that structure over all samples, in %.
- HD95: mean over samples of the per-sample mean over structures, in mm.
- Folding: mean over registration samples of the % of voxels with det(J) <= 0.
- p: two-sided paired Wilcoxon signed-rank test (scipy, zero differences dropped) of the
  reference method's sample Dice against the row's, the samples matched by (fold, sample).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from deeprs.io import write_text
from deeprs.report.collect import TASK_PREFIX, TASKS, MetricsSet, sample_scores
from deeprs.report.paper import REFERENCE_METHOD, PaperRow, does_task


def paired_wilcoxon(
    samples: pd.DataFrame, method: str, reference: str, task: str
) -> tuple[float, int]:
    """p-value and number of pairs of ``reference`` against ``method`` on shared samples.

    NaN when there is nothing to test: no shared samples, or no non-zero difference.
    """

    def scores(name: str) -> pd.Series:
        rows = samples[(samples["method"] == name) & (samples["task"] == task)]
        return rows.set_index(["fold", "sample"])["dice"].dropna()

    paired = pd.concat([scores(reference), scores(method)], axis=1, join="inner").dropna()
    if paired.empty:
        return math.nan, 0
    reference_scores, method_scores = paired.iloc[:, 0].to_numpy(), paired.iloc[:, 1].to_numpy()
    if not np.any(reference_scores != method_scores):
        return math.nan, len(paired)
    result = stats.wilcoxon(reference_scores, method_scores)
    return float(result.pvalue), len(paired)


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    if values.empty:
        return math.nan, math.nan
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return float(values.mean()), std


def summarise(
    metrics: MetricsSet,
    methods: list[str],
    structures: list[str],
    paper: dict[str, PaperRow],
    title: Callable[[str], str],
    reference: str = REFERENCE_METHOD,
) -> pd.DataFrame:
    """One row per method in the given order, numeric; Dice in %, missing methods kept."""
    frame = metrics.frame
    samples = sample_scores(frame)
    rows = []
    for method in dict.fromkeys(methods):
        row: dict[str, object] = {"method": method, "title": title(method)}
        row["status"] = metrics.status(method)
        paper_row = paper.get(method)
        for task in TASKS:
            prefix = TASK_PREFIX[task].lower()
            task_samples = samples[(samples["method"] == method) & (samples["task"] == task)]
            task_rows = frame[(frame["method"] == method) & (frame["task"] == task)]
            mean, std = _mean_std(task_samples["dice"] * 100)
            row[f"{prefix}_dice_mean"], row[f"{prefix}_dice_std"] = mean, std
            row[f"{prefix}_n_samples"] = len(task_samples)
            figure = getattr(paper_row, task) if paper_row else None
            row[f"{prefix}_paper_mean"] = figure.mean if figure else math.nan
            row[f"{prefix}_paper_std"] = figure.std if figure else math.nan
            p_value, n_pairs = (
                paired_wilcoxon(samples, method, reference, task)
                if method != reference
                else (math.nan, 0)
            )
            row[f"{prefix}_p_wilcoxon"], row[f"{prefix}_n_pairs"] = p_value, n_pairs
            row[f"{prefix}_hd95_mm_mean"], row[f"{prefix}_hd95_mm_std"] = _mean_std(
                task_samples["hd95_mm"]
            )
            for structure in structures:
                values = task_rows.loc[task_rows["structure"] == structure, "dice"] * 100
                row[f"{prefix}_dice_{structure}"] = _mean_std(values)[0]
        registration = samples[(samples["method"] == method) & (samples["task"] == "registration")]
        row["r_folding_pct_mean"], row["r_folding_pct_std"] = _mean_std(
            registration["nonpositive_jacobian_pct"]
        )
        rows.append(row)
    return pd.DataFrame(rows)


def per_fold(metrics: MetricsSet, methods: list[str]) -> pd.DataFrame:
    """Mean ± std Dice (%) over the samples of each fold: how much the folds differ."""
    samples = sample_scores(metrics.frame)
    samples = samples[samples["method"].isin(methods)]
    if samples.empty:
        return pd.DataFrame(
            columns=["method", "task", "fold", "n_samples", "dice_mean_pct", "dice_std_pct"]
        )
    grouped = samples.groupby(["method", "task", "fold"], sort=False)["dice"]
    table = grouped.agg(
        n_samples="count",
        dice_mean_pct=lambda d: d.mean() * 100,
        dice_std_pct=lambda d: d.std(ddof=1) * 100,
    ).reset_index()
    order = {name: index for index, name in enumerate(dict.fromkeys(methods))}
    table["method_rank"] = table["method"].map(order)
    table["fold_number"] = pd.to_numeric(table["fold"], errors="coerce")
    table = table.sort_values(["method_rank", "task", "fold_number", "fold"])
    return table.drop(columns=["method_rank", "fold_number"]).reset_index(drop=True)


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.1f} ± {std:.1f}" if not math.isnan(std) else f"{mean:.1f}"


def _p_cell(method: str, reference: str, p_value: float, has_task: bool) -> str:
    if not has_task:
        return "-"
    if method == reference:
        return "ref."
    if math.isnan(p_value):
        return "n/a"
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def display_table(
    summary: pd.DataFrame,
    structures: list[str],
    structure_title: Callable[[str], str],
    reference: str = REFERENCE_METHOD,
    reference_title: str = "DeepRS",
) -> pd.DataFrame:
    """The printed form: strings, "missing" rows, paper figures beside ours."""
    rows = []
    for record in summary.to_dict("records"):
        missing = record["status"] == "missing"
        row: dict[str, str] = {"Method": record["title"]}
        if record["status"] != "ok":
            row["Method"] += f" ({record['status']})"
        for task in TASKS:
            prefix = TASK_PREFIX[task]
            key = prefix.lower()
            has_task = record[f"{key}_n_samples"] > 0
            if missing:
                ours = "missing" if does_task(record["method"], task) else "-"
            else:
                ours = _cell(record[f"{key}_dice_mean"], record[f"{key}_dice_std"])
            row[f"{prefix}-Dice %"] = ours
            row[f"{prefix}-Dice % (paper)"] = _cell(
                record[f"{key}_paper_mean"], record[f"{key}_paper_std"]
            )
            row[f"{prefix} p vs {reference_title}"] = _p_cell(
                record["method"], reference, record[f"{key}_p_wilcoxon"], has_task
            )
        for task in TASKS:
            key = TASK_PREFIX[task].lower()
            row[f"{TASK_PREFIX[task]}-HD95 mm"] = _cell(
                record[f"{key}_hd95_mm_mean"], record[f"{key}_hd95_mm_std"]
            )
        row["Folding %"] = (
            "-"
            if math.isnan(record["r_folding_pct_mean"])
            else f"{record['r_folding_pct_mean']:.2f}"
        )
        for task in TASKS:
            key = TASK_PREFIX[task].lower()
            for structure in structures:
                value = record[f"{key}_dice_{structure}"]
                row[f"{TASK_PREFIX[task]} {structure_title(structure)}"] = (
                    "-" if math.isnan(value) else f"{value:.1f}"
                )
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    header = line(list(table.columns))
    rule = "|" + "|".join(":---" if index == 0 else "---:" for index in range(table.shape[1])) + "|"
    body = [line([str(value) for value in row]) for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "±": r"$\pm$", "<": r"$<$"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(character, character) for character in text)


def to_latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``), escaped by hand."""
    spec = "l" + "r" * (table.shape[1] - 1)
    lines = [
        r"\begin{table}",
        r"\centering",
        rf"\caption{{{_latex_escape(caption)}}}",
        rf"\label{{{label}}}",
        r"\resizebox{\textwidth}{!}{%",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_latex_escape(str(column)) for column in table.columns) + r" \\",
        r"\midrule",
    ]
    for row in table.itertuples(index=False):
        lines.append(" & ".join(_latex_escape(str(value)) for value in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(table: pd.DataFrame, caption: str) -> str:
    body = table.to_html(index=False, border=0, classes="deeprs-table", escape=True)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        "<style>table{border-collapse:collapse;font-family:sans-serif;font-size:13px}"
        "th,td{padding:3px 8px;border-bottom:1px solid #ccc;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head><body>\n"
        f"<p>{caption}</p>\n{body}\n</body></html>\n"
    )


def write_table_files(
    summary: pd.DataFrame, display: pd.DataFrame, out_dir: Path, stem: str, caption: str
) -> list[Path]:
    """``{stem}.csv`` (numbers) and ``{stem}.{md,html,tex}`` (the printed form), atomically."""
    out_dir = Path(out_dir)
    paths = {suffix: out_dir / f"{stem}.{suffix}" for suffix in ("csv", "md", "html", "tex")}
    write_text(paths["csv"], summary.to_csv(index=False, float_format="%.10g"))
    write_text(paths["md"], f"{caption}\n\n{to_markdown(display)}")
    write_text(paths["html"], to_html(display, caption))
    write_text(paths["tex"], to_latex(display, caption, f"tab:{stem}"))
    return list(paths.values())
