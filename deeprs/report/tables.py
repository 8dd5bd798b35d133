"""The comparison (Table 1) and ablation (Table 2) tables, beside the paper's figures.

Statistics (also in the captions and docs/methods.md):
- Dice of a sample = mean over structures of that test pair / test image; a table cell is
  mean ± std (``ddof=1``) over all samples of all folds, in %.
- S-Dice % (native): the same for segmentation scored on each test image's own grid
  against its label file (``segmentation_native`` rows); every other column, test and
  per-structure table uses the training-grid scores, as the paper does.
- Per-structure columns: mean ± std Dice of that structure over all samples, in %.
- HD95: mean over samples of the per-sample mean over structures, in mm.
- Folding: mean over registration samples of the % of voxels with det(J) <= 0.
- p: two-sided paired Wilcoxon signed-rank test (scipy, zero differences dropped) of the
  reference method's sample Dice against the row's, the samples matched by (fold, sample).

The printed forms (``.md``, ``.html``, ``.tex``) split one wide record into short tables a
reader takes in at a glance: Dice beside the paper, the paired tests, and Dice per
structure for registration and for segmentation (the paper's Fig. 5 as numbers).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from deeprs.io import write_text
from deeprs.report.collect import NATIVE_TASK, TASK_PREFIX, TASKS, MetricsSet, sample_scores
from deeprs.report.paper import REFERENCE_METHOD, PaperRow, does_task

TEST_NAME = "Wilcoxon signed-rank"
"""The paired test of every p-value, named in every printed table."""


@dataclass(frozen=True)
class PairedTest:
    """The reference method against another on the samples both have."""

    p_value: float
    n_pairs: int
    mean_difference: float
    """Mean over pairs of reference minus other, in Dice points (%)."""


def paired_wilcoxon(samples: pd.DataFrame, method: str, reference: str, task: str) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of ``reference`` against ``method``.

    The p-value is NaN when there is nothing to test: no shared samples, or no non-zero
    difference.
    """

    def scores(name: str) -> pd.Series:
        rows = samples[(samples["method"] == name) & (samples["task"] == task)]
        return rows.set_index(["fold", "sample"])["dice"].dropna()

    paired = pd.concat([scores(reference), scores(method)], axis=1, join="inner").dropna()
    if paired.empty:
        return PairedTest(math.nan, 0, math.nan)
    reference_scores, method_scores = paired.iloc[:, 0].to_numpy(), paired.iloc[:, 1].to_numpy()
    difference = float(np.mean(reference_scores - method_scores) * 100)
    if not np.any(reference_scores != method_scores):
        return PairedTest(math.nan, len(paired), difference)
    result = stats.wilcoxon(reference_scores, method_scores)
    return PairedTest(float(result.pvalue), len(paired), difference)


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
            test = (
                paired_wilcoxon(samples, method, reference, task)
                if method != reference
                else PairedTest(math.nan, 0, math.nan)
            )
            row[f"{prefix}_p_wilcoxon"], row[f"{prefix}_n_pairs"] = test.p_value, test.n_pairs
            row[f"{prefix}_mean_difference"] = test.mean_difference
            row[f"{prefix}_hd95_mm_mean"], row[f"{prefix}_hd95_mm_std"] = _mean_std(
                task_samples["hd95_mm"]
            )
            for structure in structures:
                values = task_rows.loc[task_rows["structure"] == structure, "dice"] * 100
                mean, std = _mean_std(values)
                row[f"{prefix}_dice_{structure}"], row[f"{prefix}_dice_{structure}_std"] = mean, std
        native = samples[(samples["method"] == method) & (samples["task"] == NATIVE_TASK)]
        row["s_native_dice_mean"], row["s_native_dice_std"] = _mean_std(native["dice"] * 100)
        row["s_native_n_samples"] = len(native)
        registration = samples[(samples["method"] == method) & (samples["task"] == "registration")]
        row["r_folding_pct_mean"], row["r_folding_pct_std"] = _mean_std(
            registration["nonpositive_jacobian_pct"]
        )
        rows.append(row)
    return pd.DataFrame(rows)


def per_fold(metrics: MetricsSet, methods: list[str]) -> pd.DataFrame:
    """Mean ± std Dice (%) over the samples of each fold: how much the folds differ."""
    samples = sample_scores(metrics.frame)
    samples = samples[samples["method"].isin(methods) & samples["task"].isin(TASKS)]
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


def _p_cell(p_value: float) -> str:
    if math.isnan(p_value):
        return "n/a"
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


@dataclass(frozen=True)
class PrintedTable:
    """One short table of the printed form; ``slug`` names it in LaTeX labels and HTML ids."""

    slug: str
    title: str
    frame: pd.DataFrame


def _row_label(record: dict) -> str:
    label = str(record["title"])
    return label if record["status"] == "ok" else f"{label} ({record['status']})"


def _dice_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for record in summary.to_dict("records"):
        row = {"Method": _row_label(record)}
        for task in TASKS:
            prefix, key = TASK_PREFIX[task], TASK_PREFIX[task].lower()
            columns = {f"{prefix}-Dice %": key}
            if task == "segmentation":
                columns["S-Dice % (native)"] = "s_native"
            for column, field in columns.items():
                if record["status"] == "missing":
                    row[column] = "missing" if does_task(record["method"], task) else "-"
                else:
                    row[column] = _cell(record[f"{field}_dice_mean"], record[f"{field}_dice_std"])
            row[f"{prefix}-Dice % (paper)"] = _cell(
                record[f"{key}_paper_mean"], record[f"{key}_paper_std"]
            )
        for task in TASKS:
            key = TASK_PREFIX[task].lower()
            row[f"{TASK_PREFIX[task]}-HD95 mm"] = _cell(
                record[f"{key}_hd95_mm_mean"], record[f"{key}_hd95_mm_std"]
            )
        folding = record["r_folding_pct_mean"]
        row["Folding %"] = "-" if math.isnan(folding) else f"{folding:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _tests_table(summary: pd.DataFrame, reference: str, reference_title: str) -> pd.DataFrame:
    """One row per (method, task) that the reference can be tested against."""
    rows = []
    for record in summary.to_dict("records"):
        if record["method"] == reference:
            continue
        for task in TASKS:
            key = TASK_PREFIX[task].lower()
            if record[f"{key}_n_samples"] == 0 and not (
                record["status"] == "missing" and does_task(record["method"], task)
            ):
                continue
            difference = record[f"{key}_mean_difference"]
            rows.append(
                {
                    "Method": _row_label(record),
                    "Task": task,
                    "Pairs": str(int(record[f"{key}_n_pairs"])),
                    f"{reference_title} − row, Dice points": (
                        "n/a" if math.isnan(difference) else f"{round(difference, 1) + 0.0:+.1f}"
                    ),
                    f"p ({TEST_NAME})": _p_cell(record[f"{key}_p_wilcoxon"]),
                }
            )
    columns = ["Method", "Task", "Pairs", f"{reference_title} − row, Dice points"]
    return pd.DataFrame(rows, columns=[*columns, f"p ({TEST_NAME})"])


def _structure_table(
    summary: pd.DataFrame,
    task: str,
    structures: list[str],
    structure_title: Callable[[str], str],
) -> pd.DataFrame:
    """Dice mean ± std per structure, and of the per-sample mean, of the methods doing ``task``."""
    key = TASK_PREFIX[task].lower()
    rows = []
    for record in summary.to_dict("records"):
        if record[f"{key}_n_samples"] == 0 and not does_task(record["method"], task):
            continue
        row = {"Method": _row_label(record)}
        for structure in structures:
            row[structure_title(structure)] = _cell(
                record[f"{key}_dice_{structure}"], record[f"{key}_dice_{structure}_std"]
            )
        row["Mean"] = _cell(record[f"{key}_dice_mean"], record[f"{key}_dice_std"])
        if record["status"] == "missing":
            row = {name: ("missing" if name != "Method" else value) for name, value in row.items()}
        rows.append(row)
    columns = ["Method", *(structure_title(name) for name in structures), "Mean"]
    return pd.DataFrame(rows, columns=columns)


def display_tables(
    summary: pd.DataFrame,
    structures: list[str],
    structure_title: Callable[[str], str],
    reference: str = REFERENCE_METHOD,
    reference_title: str = "DeepRS",
) -> list[PrintedTable]:
    """The printed form: Dice beside the paper, paired tests, Dice per structure."""
    return [
        PrintedTable(
            "dice",
            "Dice (%) beside the paper's, surface distance and folding",
            _dice_table(summary),
        ),
        PrintedTable(
            "tests",
            f"Paired tests: {reference_title} against each row "
            f"(two-sided {TEST_NAME} test over the same test samples)",
            _tests_table(summary, reference, reference_title),
        ),
        *(
            PrintedTable(
                f"structures-{TASK_PREFIX[task].lower()}",
                f"{task.capitalize()} Dice (%) per structure, mean ± std over test samples",
                _structure_table(summary, task, structures, structure_title),
            )
            for task in TASKS
        ),
    ]


def label_amount_tables(table: pd.DataFrame, title: Callable[[str], str]) -> list[PrintedTable]:
    """Fig. 8 as numbers: mean ± std over repeats per point, then every repeat."""
    pooled = table[table["repeat"] == "all"]
    amounts = sorted(table["n_labels"].unique())
    rows = []
    for method in dict.fromkeys(table["method"]):
        row = {"Method": title(method)}
        for n_labels in amounts:
            point = pooled[(pooled["method"] == method) & (pooled["n_labels"] == n_labels)]
            if point.empty:
                row[f"{n_labels} labelled"] = "missing"
                continue
            record = point.iloc[0]
            cell = _cell(record["dice_mean_pct"], record["repeat_std_pct"])
            row[f"{n_labels} labelled"] = f"{cell} ({int(record['n_repeats'])})"
        rows.append(row)
    repeats = table[table["repeat"] != "all"]
    detail = pd.DataFrame(
        {
            "Method": repeats["method"].map(title),
            "Labelled": repeats["n_labels"].astype(str),
            "Repeat": repeats["repeat"],
            "Test images": repeats["n_samples"].astype(str),
            "Dice %": [
                "missing" if status != "ok" else _cell(mean, std)
                for status, mean, std in zip(
                    repeats["status"],
                    repeats["dice_mean_pct"],
                    repeats["dice_std_pct"],
                    strict=True,
                )
            ],
        }
    )
    return [
        PrintedTable(
            "points",
            "Segmentation Dice (%) per number of labelled images: mean ± std over repeats "
            "(number of repeats)",
            pd.DataFrame(rows),
        ),
        PrintedTable(
            "repeats", "Each repeat: mean ± std over its test images", detail.reset_index(drop=True)
        ),
    ]


def per_fold_tables(
    per_fold_table: pd.DataFrame, title: Callable[[str], str]
) -> list[PrintedTable]:
    """Dice (%) mean ± std within each fold, one table per task, a column per fold."""
    printed = []
    for task in TASKS:
        rows = per_fold_table[per_fold_table["task"] == task]
        folds = list(dict.fromkeys(rows["fold"].astype(str)))
        frame = pd.DataFrame(
            [
                {
                    "Method": title(method),
                    **{
                        f"fold {fold}": _cell(record["dice_mean_pct"], record["dice_std_pct"])
                        for fold, record in zip(
                            group["fold"].astype(str), group.to_dict("records"), strict=True
                        )
                    },
                }
                for method, group in rows.groupby("method", sort=False)
            ],
            columns=["Method", *(f"fold {fold}" for fold in folds)],
        )
        printed.append(
            PrintedTable(
                f"folds-{TASK_PREFIX[task].lower()}",
                f"{task.capitalize()} Dice (%) per fold, mean ± std over the fold's samples",
                frame,
            )
        )
    return printed


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


def to_latex(tables: list[PrintedTable], caption: str, label: str) -> str:
    """Booktabs tables (needs ``\\usepackage{booktabs}``), escaped by hand."""
    lines = []
    for table in tables:
        frame = table.frame
        spec = "l" + "r" * (frame.shape[1] - 1)
        lines += [
            r"\begin{table}",
            r"\centering",
            rf"\caption{{{_latex_escape(table.title)}. {_latex_escape(caption)}}}",
            rf"\label{{{label}-{table.slug}}}",
            r"\resizebox{\textwidth}{!}{%",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(_latex_escape(str(column)) for column in frame.columns) + r" \\",
            r"\midrule",
        ]
        for row in frame.itertuples(index=False):
            lines.append(" & ".join(_latex_escape(str(value)) for value in row) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]
    return "\n".join(lines)


TABLE_STYLE = (
    "body{font-family:sans-serif;font-size:15px;max-width:1300px;margin:16px;color:#222}"
    "h2{font-size:17px;margin:22px 0 6px}"
    "table{border-collapse:collapse;margin-bottom:8px}"
    "th{background:#f0f0f0;font-weight:600}"
    "th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}"
    "tr:nth-child(even) td{background:#fafafa}"
    "td:first-child,th:first-child{text-align:left}"
    "p.caption{font-size:13px;color:#444;max-width:1100px}"
)
"""Readable in Snakemake's report frame and on its own: no table wider than 9 short columns."""


def to_html(tables: list[PrintedTable], title: str, caption: str) -> str:
    sections = []
    for table in tables:
        body = table.frame.to_html(index=False, border=0, classes="deeprs-table", escape=True)
        sections.append(f'<h2 id="{table.slug}">{html.escape(table.title)}</h2>\n{body}')
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{TABLE_STYLE}</style></head><body>\n"
        f'<h1 style="font-size:20px">{html.escape(title)}</h1>\n'
        + "\n".join(sections)
        + f'\n<p class="caption">{html.escape(caption)}</p>\n</body></html>\n'
    )


def to_markdown_sections(tables: list[PrintedTable], caption: str) -> str:
    parts = [caption, ""]
    for table in tables:
        parts += [f"### {table.title}", "", to_markdown(table.frame)]
    return "\n".join(parts)


def write_table_files(
    summary: pd.DataFrame,
    printed: list[PrintedTable],
    out_dir: Path,
    stem: str,
    title: str,
    caption: str,
) -> list[Path]:
    """``{stem}.csv`` (numbers) and ``{stem}.{md,html,tex}`` (the printed form), atomically."""
    out_dir = Path(out_dir)
    paths = {suffix: out_dir / f"{stem}.{suffix}" for suffix in ("csv", "md", "html", "tex")}
    write_text(paths["csv"], summary.to_csv(index=False, float_format="%.10g"))
    write_text(paths["md"], to_markdown_sections(printed, f"{title}. {caption}"))
    write_text(paths["html"], to_html(printed, title, caption))
    write_text(paths["tex"], to_latex(printed, caption, f"tab:{stem}"))
    return list(paths.values())
