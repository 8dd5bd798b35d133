"""The report against a small hand-made set of metrics files (several methods and folds)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from deeprs.errors import DataError
from deeprs.report.cli import ReportRequest, build_report
from deeprs.report.collect import METRICS_COLUMNS, collect_folds, label_amount_metrics_path

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


def samples_of(task: str, cases: list[str]) -> list[str]:
    if task == "segmentation":
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
    """Two folds of every method in LEVELS; ``deepatlas`` has no files at all."""
    for index, (method, tasks) in enumerate(LEVELS.items()):
        for fold in FOLDS:
            frame = metrics_rows(method, str(fold), tasks, seed=100 * index + fold)
            if method == "deeprs" and fold == 0:
                frame.loc[(frame["sample"] == "c1") & (frame["structure"] == "la"), "dice"] = np.nan
            path = results / method / f"fold_{fold}" / "metrics.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(path, index=False)
    for index, method in enumerate(["unet3d", "deeprs"]):
        for n_labels in (1, 4):
            for repeat in (0, 1):
                split = f"labels_{n_labels}_rep_{repeat}"
                level = 0.5 + 0.05 * n_labels + 0.1 * index
                frame = metrics_rows(
                    method, split, {"segmentation": level}, seed=7 + n_labels + repeat
                )
                path = label_amount_metrics_path(results, method, n_labels, repeat)
                path.parent.mkdir(parents=True, exist_ok=True)
                frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    results = tmp_path_factory.mktemp("results")
    write_metrics_set(results)
    out = results / "report"
    request = ReportRequest(
        results=results,
        out=out,
        methods=TABLE1_METHODS,
        ablation=ABLATION,
        folds=FOLDS,
        structures=STRUCTURES,
        label_amount_methods=["unet3d", "deeprs"],
        label_amounts=[1, 4],
        repeats=2,
    )
    return results, out, build_report(request)


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
    values = []
    for repeat in (0, 1):
        frame = pd.read_csv(label_amount_metrics_path(results, "deeprs", 4, repeat))
        values += list(frame.groupby("sample")["dice"].mean() * 100)
    assert pooled["dice_mean_pct"].item() == pytest.approx(np.mean(values), abs=1e-4)
    assert pooled["n_samples"].item() == 6
    assert set(table["status"]) == {"ok"}


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
    assert "| VoxelMorph-2 (missing) | missing | 71.7 ± 10.6 | - | - | - | - |" in markdown
    assert "| DeepRS (missing) | missing | 77.6 ± 7.9 | - | missing | 85.7 ± 7.7 | - |" in markdown


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


def test_metrics_of_another_method_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "deeprs" / "fold_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    metrics_rows("unet3d", "0", {"segmentation": 0.8}, seed=0).to_csv(path, index=False)
    with pytest.raises(
        DataError, match="holds rows of method 'unet3d' but sits in the folder of 'deeprs'"
    ):
        collect_folds(tmp_path, ["deeprs"], [0])


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
    from deeprs.report.paper import TABLE1, TABLE2

    config = load_config(repo_root / "config" / "smoke.yaml")
    results = tmp_path / "results"
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
    command = [sys.executable, "-m", "snakemake", "-s", str(repo_root / "Snakefile")]
    command += [
        "--configfile",
        str(repo_root / "config" / "smoke.yaml"),
        "--directory",
        str(tmp_path),
    ]
    command += ["--allowed-rules", "report", "--cores", "1"]
    # The rule calls `deeprs`: put this interpreter's scripts folder first on the PATH.
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    run = subprocess.run(
        [*command, "results/report/table1.csv"], capture_output=True, text=True, env=environment
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert pd.read_csv(results / "report" / "table1.csv")["status"].eq("ok").all()
    html = tmp_path / "report.html"
    run = subprocess.run(
        [*command, "--report", str(html), "results/report/table1.csv"],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    text = html.read_text()
    assert "DeepRS against the baselines" in text and "Fig. 8" in text
