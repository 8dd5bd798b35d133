"""The report against a small hand-made set of metrics files (several methods and folds)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from deeprs.errors import DataError
from deeprs.report import curves, figures
from deeprs.report.cli import ReportRequest, build_report
from deeprs.report.collect import (
    METRICS_COLUMNS,
    NATIVE_TASK,
    collect_folds,
    label_amount_metrics_path,
)
from deeprs.train.history import empty_row, write_losses_csv

STRUCTURES = ["myo", "la", "lv"]
FOLDS = [0, 1]
CASES = {0: ["c1", "c2", "c3"], 1: ["c4", "c5", "c6"]}
# Mean Dice of each method's hand-made values; the tasks a method has follow the paper.
LEVELS = {
    "affine": {"registration": 0.60},
    "voxelmorph2": {"registration": 0.70},
    "unet3d": {"segmentation": 0.75},
    "ablation_r": {"registration": 0.68},
    "deeprs": {"registration": 0.78, "segmentation": 0.85},
}
TABLE1_METHODS = ["affine", "voxelmorph2", "unet3d", "deepatlas", "deeprs"]
ABLATION = ["ablation_r", "unet3d", "deeprs"]
REPEATS = 3


def samples_of(task: str, cases: list[str]) -> list[str]:
    if task != "registration":
        return cases
    return [f"{moving}->{fixed}" for moving in cases for fixed in cases if moving != fixed]


def metrics_rows(
    method: str,
    fold: str,
    tasks: dict[str, float],
    seed: int,
    cases: list[str] | None = None,
    structures: list[str] = STRUCTURES,
) -> pd.DataFrame:
    """Rows in the format of docs/architecture.md with seeded values around each level."""
    generator = np.random.default_rng(seed)
    rows = []
    if cases is None:
        cases = CASES[int(fold) if fold.isdigit() else 0]
    for task, level in tasks.items():
        for sample in samples_of(task, cases):
            folding = float(generator.uniform(0, 2)) if task == "registration" else math.nan
            for structure in structures:
                rows.append(
                    {
                        "method": method,
                        "fold": fold,
                        "task": task,
                        "sample": sample,
                        "structure": structure,
                        "dice": float(np.clip(level + generator.normal(0, 0.05), 0, 1)),
                        "hd95_mm": float(generator.uniform(2, 10)),
                        "nonpositive_jacobian_pct": folding,
                    }
                )
    return pd.DataFrame(rows, columns=list(METRICS_COLUMNS))


def write_metrics_set(results: Path) -> None:
    """Two folds of every method in LEVELS (losses for the trained ones); ``deepatlas`` has
    no files at all; three label-amount repeats of two methods."""
    for index, (method, tasks) in enumerate(LEVELS.items()):
        for fold in FOLDS:
            frame = metrics_rows(method, str(fold), tasks, seed=100 * index + fold)
            if "segmentation" in tasks:  # also scored on each image's own grid
                native = {NATIVE_TASK: tasks["segmentation"] + 0.02}
                native_rows = metrics_rows(method, str(fold), native, seed=50 + index + fold)
                frame = pd.concat([frame, native_rows], ignore_index=True)
            if method == "deeprs" and fold == 0:
                frame.loc[(frame["sample"] == "c1") & (frame["structure"] == "la"), "dice"] = np.nan
            path = results / method / f"fold_{fold}" / "metrics.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(path, index=False)
            if method != "affine":
                write_losses(path.parent / "losses.csv", method, seed=fold)
                write_validation(path.parent / "validation.csv", method, rising=fold == 1)
    for index, method in enumerate(["unet3d", "deeprs"]):
        for n_labels in (1, 4):
            for repeat in range(REPEATS):
                split = f"labels_{n_labels}_rep_{repeat}"
                level = 0.5 + 0.05 * n_labels + 0.1 * index
                frame = metrics_rows(
                    method, split, {"segmentation": level}, seed=7 + n_labels + repeat
                )
                path = label_amount_metrics_path(results, method, n_labels, repeat)
                path.parent.mkdir(parents=True, exist_ok=True)
                frame.to_csv(path, index=False)


def write_losses(path: Path, method: str, seed: int, iterations: int = 30) -> None:
    """A decaying loss per term the method has (segmentation CE, or registration NCC)."""
    generator = np.random.default_rng(seed)
    history = []
    for iteration in range(1, iterations + 1):
        row = empty_row(iteration)
        decay = math.exp(-iteration / 10)
        if "segmentation" in LEVELS[method]:
            row["seg_ce"] = 1.5 * decay + 0.1 + 0.02 * generator.random()
        if "registration" in LEVELS[method]:
            row["reg_cc"] = -0.2 - 0.3 * (1 - decay)
        history.append(row)
    write_losses_csv(history, path)


def write_validation(path: Path, method: str, rising: bool) -> None:
    """Validation Dice every 5 of 30 iterations: flat from iteration 10, or (``rising``)
    still climbing 1 point per 5 iterations, i.e. 2 points over the last third. R's folding
    (%) is 1 throughout, or (``rising``) iteration / 10."""
    iterations = np.arange(0, 31, 5)
    curve = 0.5 + 0.01 * iterations / 5 if rising else np.minimum(0.3 + 0.04 * iterations, 0.7)
    registers = "registration" in LEVELS[method]
    frame = pd.DataFrame(
        {
            "iteration": iterations,
            "s_dice": curve if "segmentation" in LEVELS[method] else np.nan,
            "r_dice": curve - 0.1 if registers else np.nan,
            "r_folding_pct": (iterations / 10 if rising else 1.0) if registers else np.nan,
            "source": "validation",
        }
    )
    frame.to_csv(path, index=False)


def study_request(results: Path, out: Path) -> ReportRequest:
    """The whole test study of :func:`write_metrics_set`: every method, ablation and amount."""
    return ReportRequest(
        results=results,
        out=out,
        methods=TABLE1_METHODS,
        ablation=ABLATION,
        folds=FOLDS,
        structures=STRUCTURES,
        label_amount_methods=["unet3d", "deeprs"],
        label_amounts=[1, 4],
        repeats=REPEATS,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    results = tmp_path_factory.mktemp("results")
    write_metrics_set(results)
    out = results / "report"
    return results, out, build_report(study_request(results, out))


def hand_sample_scores(results: Path, method: str, task: str) -> dict[tuple[str, str], float]:
    """Mean over structures per (fold, sample), computed with plain loops and NaN skipped."""
    scores: dict[tuple[str, str], list[float]] = {}
    for fold in FOLDS:
        frame = pd.read_csv(results / method / f"fold_{fold}" / "metrics.csv")
        for row in frame[frame["task"] == task].itertuples():
            if not math.isnan(row.dice):
                scores.setdefault((str(row.fold), row.sample), []).append(row.dice)
    return {key: sum(values) / len(values) for key, values in scores.items()}


def test_table1_means_and_stds_match_a_hand_computation(report) -> None:
    results, out, _ = report
    table = pd.read_csv(out / "table1.csv").set_index("method")
    for method, tasks in LEVELS.items():
        if method not in TABLE1_METHODS:
            continue
        for task in tasks:
            scores = np.array(list(hand_sample_scores(results, method, task).values())) * 100
            prefix = task[0]
            assert table.loc[method, f"{prefix}_dice_mean"] == pytest.approx(
                scores.mean(), abs=1e-4
            )
            assert table.loc[method, f"{prefix}_dice_std"] == pytest.approx(
                scores.std(ddof=1), abs=1e-4
            )
            assert table.loc[method, f"{prefix}_n_samples"] == len(scores)
    # 2 folds x 6 ordered pairs of 3 cases; 2 folds x 3 images.
    assert table.loc["deeprs", "r_n_samples"] == 12
    assert table.loc["deeprs", "s_n_samples"] == 6


def test_per_structure_hd95_and_folding_columns(report) -> None:
    results, out, _ = report
    table = pd.read_csv(out / "table1.csv").set_index("method")
    frames = [
        pd.read_csv(results / "voxelmorph2" / f"fold_{fold}" / "metrics.csv") for fold in FOLDS
    ]
    rows = pd.concat(frames)
    lv = rows[rows["structure"] == "lv"]["dice"].to_numpy() * 100
    assert table.loc["voxelmorph2", "r_dice_lv"] == pytest.approx(lv.mean(), abs=1e-4)
    per_sample_hd95 = rows.groupby(["fold", "sample"])["hd95_mm"].mean()
    assert table.loc["voxelmorph2", "r_hd95_mm_mean"] == pytest.approx(
        per_sample_hd95.mean(), abs=1e-4
    )
    folding = rows.groupby(["fold", "sample"])["nonpositive_jacobian_pct"].first()
    assert table.loc["voxelmorph2", "r_folding_pct_mean"] == pytest.approx(folding.mean(), abs=1e-4)
    assert math.isnan(table.loc["unet3d", "r_folding_pct_mean"])


def test_rows_follow_the_configured_order_and_missing_method_is_shown(report) -> None:
    _, out, _ = report
    table = pd.read_csv(out / "table1.csv")
    assert table["method"].tolist() == TABLE1_METHODS
    deepatlas = table.set_index("method").loc["deepatlas"]
    assert deepatlas["status"] == "missing"
    assert deepatlas["title"] == "DeepAtlas"
    markdown = (out / "table1.md").read_text()
    assert "| DeepAtlas (missing) | missing |" in markdown
    assert "DeepAtlas (missing)" in (out / "table1.html").read_text()
    ablation = pd.read_csv(out / "table2.csv")
    assert ablation["title"].tolist() == ["R", "S", "R+S+DSS+ACM+DRC (DeepRS)"]


def test_paper_figures_sit_beside_ours(report) -> None:
    _, out, _ = report
    table = pd.read_csv(out / "table1.csv").set_index("method")
    assert table.loc["deeprs", "r_paper_mean"] == 77.6
    assert table.loc["deeprs", "s_paper_std"] == 7.7
    assert math.isnan(table.loc["affine", "s_paper_mean"])
    markdown = (out / "table1.md").read_text()
    affine = table.loc["affine"]
    cells = f"| Affine only | {affine.r_dice_mean:.1f} ± {affine.r_dice_std:.1f} | 64.6 ± 10.7 |"
    assert cells in markdown


def test_wilcoxon_p_values_equal_scipy_on_the_same_pairs(report) -> None:
    results, out, _ = report
    table = pd.read_csv(out / "table1.csv").set_index("method")
    reference = hand_sample_scores(results, "deeprs", "registration")
    for method in ("affine", "voxelmorph2"):
        other = hand_sample_scores(results, method, "registration")
        keys = sorted(set(reference) & set(other))
        expected = stats.wilcoxon([reference[k] for k in keys], [other[k] for k in keys]).pvalue
        assert table.loc[method, "r_p_wilcoxon"] == pytest.approx(expected, rel=1e-8)
        assert table.loc[method, "r_n_pairs"] == len(keys) == 12
    reference = hand_sample_scores(results, "deeprs", "segmentation")
    other = hand_sample_scores(results, "unet3d", "segmentation")
    keys = sorted(reference)
    expected = stats.wilcoxon([reference[k] for k in keys], [other[k] for k in keys]).pvalue
    assert table.loc["unet3d", "s_p_wilcoxon"] == pytest.approx(expected, rel=1e-8)
    assert math.isnan(table.loc["deeprs", "r_p_wilcoxon"])


def test_per_fold_table_gives_one_row_per_method_task_and_fold(report) -> None:
    results, out, _ = report
    per_fold = pd.read_csv(out / "per_fold.csv", dtype={"fold": str})
    deeprs_registration = per_fold[
        (per_fold["method"] == "deeprs") & (per_fold["task"] == "registration")
    ]
    assert deeprs_registration["fold"].tolist() == ["0", "1"]
    scores = hand_sample_scores(results, "deeprs", "registration")
    fold_one = np.array([value for (fold, _), value in scores.items() if fold == "1"]) * 100
    row = deeprs_registration.set_index("fold").loc["1"]
    assert row["dice_mean_pct"] == pytest.approx(fold_one.mean(), abs=1e-4)
    assert row["n_samples"] == 6
    assert "deepatlas" not in set(per_fold["method"])


def test_label_amount_table_pools_repeats_and_samples(report) -> None:
    results, out, _ = report
    table = pd.read_csv(out / "label_amount.csv", dtype={"repeat": str})
    pooled = table[
        (table["method"] == "deeprs") & (table["n_labels"] == 4) & (table["repeat"] == "all")
    ]
    values, repeat_means = [], []
    for repeat in range(REPEATS):
        frame = pd.read_csv(label_amount_metrics_path(results, "deeprs", 4, repeat))
        per_image = list(frame.groupby("sample")["dice"].mean() * 100)
        values += per_image
        repeat_means.append(np.mean(per_image))
    assert pooled["dice_mean_pct"].item() == pytest.approx(np.mean(repeat_means), abs=1e-4)
    assert pooled["dice_std_pct"].item() == pytest.approx(np.std(values, ddof=1), abs=1e-4)
    # The band of the curve: the spread over the repeats' draws of labelled images.
    assert pooled["repeat_std_pct"].item() == pytest.approx(np.std(repeat_means, ddof=1), abs=1e-4)
    assert pooled["repeat_std_pct"].item() > 0
    assert pooled["n_repeats"].item() == REPEATS
    assert pooled["n_samples"].item() == 3 * REPEATS
    assert set(table["status"]) == {"ok"}


def test_label_amount_page_gives_mean_and_std_over_repeats(report) -> None:
    _, out, _ = report
    table = pd.read_csv(out / "label_amount.csv", dtype={"repeat": str})
    point = table[
        (table["method"] == "unet3d") & (table["n_labels"] == 1) & (table["repeat"] == "all")
    ]
    mean, spread = point["dice_mean_pct"].item(), point["repeat_std_pct"].item()
    text = (out / "label_amount.html").read_text()
    assert f"<td>{mean:.1f} ± {spread:.1f} (3)</td>" in text
    assert text.count("<tr>") == 2 + 2 * 2 * REPEATS  # body rows: 2 methods, then every repeat
    per_fold = (out / "per_fold.html").read_text()
    assert "<th>fold 0</th>" in per_fold and "<td>R</td>" in per_fold


def test_one_repeat_has_no_spread_over_repeats(tmp_path: Path) -> None:
    write_metrics_set(tmp_path)
    request = ReportRequest(
        results=tmp_path,
        out=tmp_path / "out",
        methods=["deeprs"],
        ablation=[],
        folds=FOLDS,
        label_amount_methods=["deeprs"],
        label_amounts=[1],
        repeats=1,
    )
    build_report(request)
    table = pd.read_csv(tmp_path / "out" / "label_amount.csv", dtype={"repeat": str})
    pooled = table[table["repeat"] == "all"]
    assert pooled["n_repeats"].tolist() == [1]
    assert pooled["repeat_std_pct"].isna().all()


def test_every_figure_is_written_and_not_empty(report) -> None:
    _, out, written = report
    names = {
        "boxplot_registration.svg",
        "boxplot_registration.png",
        "boxplot_segmentation.svg",
        "boxplot_segmentation.png",
        "label_amount.png",
        "label_amount.csv",
        "per_fold.csv",
        "per_fold.html",
        "label_amount.html",
        "learning_curves_deeprs.png",
        "learning_curves_voxelmorph2.png",
        "learning_curves_unet3d.png",
        *(f"table{n}.{suffix}" for n in (1, 2) for suffix in ("csv", "md", "html", "tex")),
    }
    assert names <= {path.name for path in written}
    for name in names:
        assert (out / name).stat().st_size > 500, name
    assert (out / "boxplot_registration.png").read_bytes()[:4] == b"\x89PNG"
    tex = (out / "table1.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and "±" not in tex


def test_missing_label_amount_runs_are_listed(tmp_path: Path) -> None:
    request = ReportRequest(
        results=tmp_path,
        out=tmp_path / "report",
        methods=["voxelmorph2", "deeprs"],
        ablation=[],
        folds=[0],
        label_amount_methods=["unet3d"],
        label_amounts=[1],
        repeats=2,
    )
    build_report(request)
    table = pd.read_csv(tmp_path / "report" / "label_amount.csv")
    assert table["status"].tolist() == ["missing", "missing"]
    summary = pd.read_csv(tmp_path / "report" / "table1.csv")
    assert summary["status"].tolist() == ["missing", "missing"]
    markdown = (tmp_path / "report" / "table1.md").read_text()
    # A missing method shows "missing" for the tasks it does and "-" for the others.
    assert (
        "| VoxelMorph-2 (missing) | missing | 71.7 ± 10.6 | - | - | - | - | - | - |\n" in markdown
    )
    assert (
        "| DeepRS (missing) | missing | 77.6 ± 7.9 | missing | missing | 85.7 ± 7.7 | - | - | - |\n"
        in markdown
    )
    assert "| VoxelMorph-2 (missing) | registration | 0 | n/a | n/a |" in markdown


def test_partial_method_is_marked(tmp_path: Path) -> None:
    write_metrics_set(tmp_path)
    metrics = collect_folds(tmp_path, ["voxelmorph2"], [0, 1, 2])
    assert metrics.status("voxelmorph2") == "partial: 2 of 3 files"


def test_malformed_metrics_file_names_the_file_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "deeprs" / "fold_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("method,fold,task,sample,structure,dice\ndeeprs,0,segmentation,c1,myo,0.8\n")
    with pytest.raises(DataError) as error:
        collect_folds(tmp_path, ["deeprs"], [0])
    assert str(error.value) == (
        f"metrics file '{path}' lacks the columns hd95_mm, nonpositive_jacobian_pct; "
        "rerun `deeprs evaluate` to rewrite it"
    )


def test_native_segmentation_sits_beside_the_grid_scores_in_table1(report) -> None:
    """``S-Dice % (native)``: mean ± std of the ``segmentation_native`` samples; every other
    column (S-Dice, the tests, the per-structure tables) stays on the grid rows."""
    results, out, _ = report
    table = pd.read_csv(out / "table1.csv").set_index("method")
    dice = markdown_section(
        (out / "table1.md").read_text(), "Dice (%) beside the paper's, surface distance and folding"
    ).set_index("Method")
    assert list(dice.columns[:5]) == [
        "R-Dice %",
        "R-Dice % (paper)",
        "S-Dice %",
        "S-Dice % (native)",
        "S-Dice % (paper)",
    ]
    for method, title in (("unet3d", "3D U-Net"), ("deeprs", "DeepRS")):
        native = np.array(list(hand_sample_scores(results, method, NATIVE_TASK).values())) * 100
        grid = np.array(list(hand_sample_scores(results, method, "segmentation").values())) * 100
        assert native.mean() > grid.mean() + 1, "the fixture's native level is 2 points higher"
        row = table.loc[method]
        assert row["s_native_dice_mean"] == pytest.approx(native.mean(), abs=1e-4)
        assert row["s_native_dice_std"] == pytest.approx(native.std(ddof=1), abs=1e-4)
        assert row["s_native_n_samples"] == len(native) == 6
        assert row["s_dice_mean"] == pytest.approx(grid.mean(), abs=1e-4)
        assert dice.loc[title, "S-Dice % (native)"] == (
            f"{native.mean():.1f} ± {native.std(ddof=1):.1f}"
        )
    assert dice.loc["VoxelMorph-2", "S-Dice % (native)"] == "-"
    assert dice.loc["DeepAtlas (missing)", "S-Dice % (native)"] == "missing"
    per_fold = pd.read_csv(out / "per_fold.csv")
    assert set(per_fold["task"]) == {"registration", "segmentation"}


def test_an_unknown_task_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deeprs" / "fold_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    frame = metrics_rows("deeprs", "0", {"segmentation": 0.8}, seed=0)
    frame.loc[0, "task"] = "segmentation_resampled"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as error:
        collect_folds(tmp_path, ["deeprs"], [0])
    assert str(error.value) == (
        f"metrics file '{path}' has unknown tasks segmentation_resampled; the column 'task' "
        "takes registration, segmentation, segmentation_native"
    )


def test_metrics_of_another_method_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "deeprs" / "fold_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    metrics_rows("unet3d", "0", {"segmentation": 0.8}, seed=0).to_csv(path, index=False)
    with pytest.raises(
        DataError, match="holds rows of method 'unet3d' but sits in the folder of 'deeprs'"
    ):
        collect_folds(tmp_path, ["deeprs"], [0])


def markdown_section(text: str, heading: str) -> pd.DataFrame:
    """The markdown table under ``### heading`` as strings."""
    block = text.split(f"### {heading}\n\n", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip("|").split(" | ") for line in block.strip().splitlines()]
    header, body = [cell.strip() for cell in lines[0]], lines[2:]
    return pd.DataFrame([[cell.strip() for cell in row] for row in body], columns=header)


def test_per_structure_tables_list_every_method_with_mean_and_std(report) -> None:
    results, out, _ = report
    table = pd.read_csv(out / "table1.csv").set_index("method")
    markdown = (out / "table1.md").read_text()
    registration = markdown_section(
        markdown, "Registration Dice (%) per structure, mean ± std over test samples"
    ).set_index("Method")
    segmentation = markdown_section(
        markdown, "Segmentation Dice (%) per structure, mean ± std over test samples"
    ).set_index("Method")
    assert list(registration.columns) == ["Myo", "LA", "LV", "Mean"]
    assert registration.index.tolist() == [
        "Affine only",
        "VoxelMorph-2",
        "DeepAtlas (missing)",
        "DeepRS",
    ]
    assert segmentation.index.tolist() == ["3D U-Net", "DeepAtlas (missing)", "DeepRS"]
    assert set(registration.loc["DeepAtlas (missing)"]) == {"missing"}
    rows = pd.concat(
        pd.read_csv(results / "voxelmorph2" / f"fold_{fold}" / "metrics.csv") for fold in FOLDS
    )
    la = rows.loc[rows["structure"] == "la", "dice"].to_numpy() * 100
    assert registration.loc["VoxelMorph-2", "LA"] == f"{la.mean():.1f} ± {la.std(ddof=1):.1f}"
    assert table.loc["voxelmorph2", "r_dice_la_std"] == pytest.approx(la.std(ddof=1), abs=1e-4)
    mean = table.loc["voxelmorph2"]
    assert registration.loc["VoxelMorph-2", "Mean"] == (
        f"{mean.r_dice_mean:.1f} ± {mean.r_dice_std:.1f}"
    )
    ablation = markdown_section(
        (out / "table2.md").read_text(),
        "Segmentation Dice (%) per structure, mean ± std over test samples",
    )
    assert ablation["Method"].tolist() == ["S", "R+S+DSS+ACM+DRC (DeepRS)"]


def test_paired_tests_table_names_the_test_and_the_difference(report) -> None:
    results, out, _ = report
    tests = markdown_section(
        (out / "table1.md").read_text(),
        "Paired tests: DeepRS against each row "
        "(two-sided Wilcoxon signed-rank test over the same test samples)",
    )
    assert list(tests.columns) == [
        "Method",
        "Task",
        "Pairs",
        "DeepRS − row, Dice points",
        "p (Wilcoxon signed-rank)",
    ]
    assert tests[["Method", "Task"]].values.tolist() == [
        ["Affine only", "registration"],
        ["VoxelMorph-2", "registration"],
        ["3D U-Net", "segmentation"],
        ["DeepAtlas (missing)", "registration"],
        ["DeepAtlas (missing)", "segmentation"],
    ]
    reference = hand_sample_scores(results, "deeprs", "registration")
    other = hand_sample_scores(results, "affine", "registration")
    keys = sorted(set(reference) & set(other))
    difference = np.mean([reference[k] - other[k] for k in keys]) * 100
    p_value = stats.wilcoxon([reference[k] for k in keys], [other[k] for k in keys]).pvalue
    affine = tests.set_index("Method").loc["Affine only"]
    assert affine["Pairs"] == "12"
    assert affine["DeepRS − row, Dice points"] == f"{difference:+.1f}"
    assert affine["p (Wilcoxon signed-rank)"] == ("<0.001" if p_value < 0.001 else f"{p_value:.3f}")
    summary = pd.read_csv(out / "table1.csv").set_index("method")
    assert summary.loc["affine", "r_mean_difference"] == pytest.approx(difference, abs=1e-6)


def test_html_tables_are_short_and_name_the_venue_and_test(report) -> None:
    _, out, _ = report
    for stem in ("table1", "table2"):
        text = (out / f"{stem}.html").read_text()
        headers = [
            len(re.findall(r"<th[\s>]", head))
            for head in re.findall(r"<thead>.*?</thead>", text, re.S)
        ]
        assert len(headers) == 4, stem  # Dice, tests, per structure R, per structure S
        assert max(headers) <= 9, headers
        assert "Wilcoxon signed-rank" in text and "ECCV 2020" in text and "MICCAI" not in text
    tex = (out / "table1.tex").read_text()
    assert tex.count(r"\begin{table}") == 4 and r"\label{tab:table1-tests}" in tex


class FigureRecorder:
    """Stands in for ``save_figure``: keeps each figure's axes, then saves as usual."""

    def __init__(self) -> None:
        self.saved: dict[str, plt.Figure] = {}
        self.original = figures.save_figure

    def __call__(self, figure, path):
        self.saved[Path(path).name] = figure
        return self.original(figure, path)


def visible_axes(figure) -> list:
    return [axis for axis in figure.axes if axis.axison]


def test_every_figure_axis_has_a_label_and_curves_differ_without_colour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = FigureRecorder()
    monkeypatch.setattr(figures, "save_figure", recorder)
    monkeypatch.setattr(curves, "save_figure", recorder)
    monkeypatch.setattr(plt, "close", lambda figure=None: None)
    write_metrics_set(tmp_path)
    (tmp_path / "unet3d" / "fold_1" / "losses.csv").unlink()  # one fold's curves: "fold 0"
    build_report(study_request(tmp_path, tmp_path / "out"))
    expected = {
        "boxplot_registration.png",
        "boxplot_segmentation.png",
        "label_amount.png",
        "learning_curves_deeprs.png",
        "learning_curves_unet3d.png",
    }
    assert expected <= set(recorder.saved)
    for name, figure in recorder.saved.items():
        for axis in visible_axes(figure):
            assert axis.get_xlabel() and axis.get_ylabel(), (name, axis.get_title())
    # Learning curves: one panel per non-zero term, a line per fold and their mean.
    deeprs_curves = visible_axes(recorder.saved["learning_curves_deeprs.png"])
    assert [axis.get_title() for axis in deeprs_curves] == [
        "R: local NCC",
        "S: CE on augmentation data",
        # The mean of a flat fold 0 and a fold 1 rising 2 points over the last third.
        "validation S Dice (+1.0 pts over last third)",
        "validation R Dice (+1.0 pts over last third)",
        "validation R folding (det J <= 0)",
    ]
    assert deeprs_curves[2].get_ylabel() == "Dice (%)"
    # Folding in % as recorded (not scaled as the Dice): the mean of 1 and 30 / 10 at the end.
    folding_mean = [line for line in deeprs_curves[4].get_lines() if line.get_label() == "mean"]
    assert folding_mean[0].get_ydata()[-1] == pytest.approx(2.0)
    assert deeprs_curves[4].get_ylabel() == "voxels folded (%)"
    assert [line.get_label() for line in deeprs_curves[0].get_lines()] == [
        "fold 0",
        "fold 1",
        "mean",
    ]
    for name in ("learning_curves_deeprs.png", "learning_curves_unet3d.png"):
        figure = recorder.saved[name]
        folds = [
            line.get_label()
            for line in visible_axes(figure)[0].get_lines()
            if line.get_label().startswith("fold ")
        ]
        named = folds[0] if len(folds) == 1 else "folds " + ", ".join(f[5:] for f in folds)
        assert figure.get_suptitle().endswith(named), (name, figure.get_suptitle())
    assert recorder.saved["learning_curves_unet3d.png"].get_suptitle().endswith(", fold 0")
    # Label-amount curves: marker and line style differ between methods, not only colour.
    axis = visible_axes(recorder.saved["label_amount.png"])[0]
    curves_drawn = {
        line.get_label(): line for line in axis.get_lines() if not line.get_label().startswith("_")
    }
    assert set(curves_drawn) == {"3D U-Net (mean of 3 repeats)", "DeepRS (mean of 3 repeats)"}
    unet, deeprs = curves_drawn.values()
    assert unet.get_marker() != deeprs.get_marker()
    assert unet.get_linestyle() != deeprs.get_linestyle()
    assert len(axis.collections) == 2  # one band per method


def test_loss_panels_of_training_have_axis_labels(tmp_path: Path, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    from deeprs.train import history

    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    rows = []
    for iteration in range(1, 11):
        row = history.empty_row(iteration)
        row["seg_ce"], row["reg_cc"] = 1.0 / iteration, -0.1 * iteration
        rows.append(row)
    history.plot_losses(rows, tmp_path / "losses.png", "deeprs fold 0")
    (figure,) = closed
    panels = visible_axes(figure)
    assert len(panels) == 2
    assert all(axis.get_xlabel() == "iteration" and axis.get_ylabel() for axis in panels)


def test_learning_curves_read_validation_files_without_folding(tmp_path: Path, monkeypatch) -> None:
    """Files written before R's folding was recorded keep their Dice panels and get none for
    folding; a fold that has it is drawn alone."""
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    for fold in (0, 1):
        path = tmp_path / "voxelmorph2" / f"fold_{fold}" / "validation.csv"
        path.parent.mkdir(parents=True)
        write_validation(path, "voxelmorph2", rising=fold == 1)
    old = tmp_path / "voxelmorph2" / "fold_0" / "validation.csv"
    pd.read_csv(old).drop(columns="r_folding_pct").to_csv(old, index=False)
    runs = {0: pd.DataFrame({"iteration": [1, 2], "reg_cc": [-0.1, -0.2]})}
    for folds, titles in (
        ([0], ["R: local NCC", "validation R Dice (+0.0 pts over last third)"]),
        (
            [0, 1],
            [
                "R: local NCC",
                "validation R Dice (+1.0 pts over last third)",
                "validation R folding (det J <= 0)",
            ],
        ),
    ):
        validation = curves.read_validations(tmp_path, "voxelmorph2", folds)
        curves.learning_curve_figure(runs, "vm2", "C0", tmp_path / "curves.png", validation)
        panels = visible_axes(closed.pop())
        assert [axis.get_title() for axis in panels] == titles
    folding = [line.get_label() for line in panels[2].get_lines()]
    assert folding == ["fold 1"]


def test_five_folds_of_learning_curves_differ_without_colour(tmp_path: Path, monkeypatch) -> None:
    """The study's five folds get five line styles: fold 4 once looked exactly like fold 0."""
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    runs = {fold: pd.DataFrame({"iteration": [1, 2], "reg_cc": [-0.1, -0.2]}) for fold in range(5)}
    curves.learning_curve_figure(runs, "vm2", "C0", tmp_path / "curves.png")
    lines = visible_axes(closed.pop())[0].get_lines()
    fold_lines = [line for line in lines if line.get_label().startswith("fold ")]
    assert len(fold_lines) == 5
    # The drawn dash pattern (matplotlib keeps it unscaled per line; "-" has none).
    patterns = {repr(line._unscaled_dash_pattern) for line in fold_lines}
    assert len(patterns) == 5


def test_subset_report_never_replaces_the_study_report(tmp_path: Path, capsys) -> None:
    from deeprs.cli import main

    write_metrics_set(tmp_path)
    study = tmp_path / "report"
    study.mkdir()
    (study / "table2.csv").write_text("the study's table\n")
    arguments = ["report", "--results", str(tmp_path), "--methods", "affine", "deeprs"]
    arguments += ["--folds", "0"]
    assert main(arguments) == 0
    assert (study / "table2.csv").read_text() == "the study's table\n"
    assert sorted(path.name for path in study.iterdir()) == ["table2.csv"]
    subset = pd.read_csv(tmp_path / "report_subset" / "table1.csv")
    assert subset["method"].tolist() == ["affine", "deeprs"]
    assert main([*arguments, "--out", str(study)]) == 2
    message = capsys.readouterr().err.strip()
    assert "is the study's report" in message and "--replace-study-report" in message
    assert message.count("\n") == 0
    assert (study / "table2.csv").read_text() == "the study's table\n"
    assert main([*arguments, "--out", str(study), "--replace-study-report"]) == 0
    assert pd.read_csv(study / "table1.csv")["method"].tolist() == ["affine", "deeprs"]


def write_preprocessed_qc(folder: Path) -> None:
    folder.mkdir(parents=True)
    pd.DataFrame(
        {
            "case": ["ct_train_1001", "ct_test_2001"],
            "labelled": [True, False],
            "box_source": ["label", "carried"],
            "affine_determinant": [0.98, 1.0],
            "dice_pairwise_crop": [0.61, math.nan],
            "dice_pairwise_affine": [0.64, math.nan],
            "elastix_log": ["a", "b"],
        }
    ).to_csv(folder / "qc.csv", index=False)
    figure, axis = plt.subplots(figsize=(1, 1))
    axis.imshow(np.eye(4))
    figure.savefig(folder / "mosaic.png")


def test_qc_page_shows_every_case_and_embeds_the_mosaic(tmp_path: Path) -> None:
    from deeprs.report import qc

    write_preprocessed_qc(tmp_path / "preprocessed")
    path = qc.write_qc_page(tmp_path / "preprocessed", tmp_path / "qc.html")
    text = path.read_text()
    assert "<td>ct_train_1001</td>" in text and "<td>ct_test_2001</td>" in text
    assert "Dice to others, affine" in text and "elastix_log" not in text
    assert "data:image/png;base64,iVBOR" in text
    assert "Mean Dice to the other cases: 0.610 after cropping, 0.640 after the affine" in text
    (tmp_path / "preprocessed" / "mosaic.png").unlink()
    with pytest.raises(DataError, match="mosaic.png' is missing; rerun `deeprs preprocess`"):
        qc.write_qc_page(tmp_path / "preprocessed", tmp_path / "qc.html")


def test_cli_writes_the_report_and_reports_a_bad_file_in_one_line(tmp_path: Path, capsys) -> None:
    from deeprs.cli import main

    write_metrics_set(tmp_path)
    arguments = ["report", "--results", str(tmp_path), "--out", str(tmp_path / "out")]
    arguments += ["--methods", *TABLE1_METHODS, "--ablation", *ABLATION, "--folds", "0", "1"]
    arguments += ["--structures", *STRUCTURES]
    assert main(arguments) == 0
    assert pd.read_csv(tmp_path / "out" / "table1.csv")["method"].tolist() == TABLE1_METHODS
    (tmp_path / "affine" / "fold_1" / "metrics.csv").write_text("method,fold\naffine,1\n")
    assert main(arguments) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("deeprs report: error: metrics file '")
    assert message.count("\n") == 0


@pytest.mark.slow
def test_snakemake_report_rule_and_html_report(tmp_path: Path, repo_root: Path) -> None:
    """The `report` rule runs on hand-made metrics of the smoke config, then `--report`."""
    import os
    import subprocess
    import sys

    from deeprs.config import load_config
    from deeprs.methods import get_method
    from deeprs.report.paper import TABLE1, TABLE2

    config = load_config(repo_root / "config" / "smoke.yaml")
    results = tmp_path / config["results"]
    structures = list(config["data"]["labels"])
    for index, method in enumerate(dict.fromkeys(config["methods"] + config["ablation"])):
        row = TABLE1.get(method) or TABLE2[method]
        tasks = {task: 0.7 for task in ("registration", "segmentation") if getattr(row, task)}
        for fold in range(config["folds"]["n_folds"]):
            cases = [f"f{fold}c{case}" for case in range(3)]
            frame = metrics_rows(method, str(fold), tasks, 10 * index + fold, cases, structures)
            path = results / method / f"fold_{fold}" / "metrics.csv"
            path.parent.mkdir(parents=True)
            frame.to_csv(path, index=False)
    for method in config["label_amount_methods"]:
        for n_labels in config["folds"]["label_amounts"]:
            for repeat in range(config["folds"]["label_amount_repeats"]):
                split = f"labels_{n_labels}_rep_{repeat}"
                rows = metrics_rows(
                    method, split, {"segmentation": 0.7}, n_labels, ["a", "b"], structures
                )
                path = label_amount_metrics_path(results, method, n_labels, repeat)
                path.parent.mkdir(parents=True)
                rows.to_csv(path, index=False)
    for method in dict.fromkeys(config["methods"] + config["ablation"]):
        if get_method(method).trains:
            for fold in range(config["folds"]["n_folds"]):
                path = results / method / f"fold_{fold}" / "losses.csv"
                write_losses(path, "deeprs", seed=fold)
                write_validation(path.parent / "validation.csv", "deeprs", rising=False)
    write_preprocessed_qc(results / "preprocessed")
    command = [sys.executable, "-m", "snakemake", "-s", str(repo_root / "Snakefile")]
    command += [
        "--configfile",
        str(repo_root / "config" / "smoke.yaml"),
        "--directory",
        str(tmp_path),
    ]
    command += ["--allowed-rules", "report", "--cores", "1"]
    target = f"{config['results']}/report/table1.csv"
    # The rule calls `deeprs`: put this interpreter's scripts folder first on the PATH.
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    run = subprocess.run([*command, target], capture_output=True, text=True, env=environment)
    assert run.returncode == 0, run.stderr[-2000:]
    assert pd.read_csv(results / "report" / "table1.csv")["status"].eq("ok").all()
    html = tmp_path / "report.html"
    run = subprocess.run(
        [*command, "--report", str(html), target],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    text = html.read_text()
    assert "DeepRS against the baselines" in text and "Fig. 8" in text
    assert "ECCV 2020" in text and "MICCAI" not in text
    assert "Study configuration" in text and "learning_curves_deeprs.png" in text
    assert "convergence.html" in text
    assert (results / "report" / "qc.html").is_file()


def test_convergence_table_applies_the_criterion_per_run(report) -> None:
    _, out, _ = report
    table = pd.read_csv(out / "convergence.csv")
    deeprs = table[table["method"] == "DeepRS"].set_index(["fold", "network"])
    assert deeprs.loc[(0, "S"), "converged"] == "yes"
    assert deeprs.loc[(0, "S"), "final Dice (%)"] == pytest.approx(70.0)
    assert deeprs.loc[(1, "R"), "converged"] == "no"
    assert deeprs.loc[(1, "R"), "change over last third (points)"] == pytest.approx(2.0)
    assert deeprs.loc[(1, "R"), "standard error (points)"] == pytest.approx(0.0, abs=1e-6)
    assert set(table[table["method"] == "3D U-Net"]["network"]) == {"S"}
    assert set(table["validated on"]) == {"validation"}
    html = (out / "convergence.html").read_text()
    assert "Convergence per run" in html and "less than 1 Dice point" in html
