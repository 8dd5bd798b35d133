"""The whole workflow end to end on `config/smoke.yaml`, as `snakemake reproduce` runs it:
every method, the ablation and the label-amount study; a second run does nothing; one fold
reruns alone; the demo preset plans every (method, fold) job in a results folder of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "config" / "smoke.yaml"
DEMO = REPO / "config" / "config.yaml"


def snakemake(workdir: Path, configfile: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]
    command += ["--configfile", str(configfile), "--directory", str(workdir)]
    command += ["--workflow-profile", str(REPO / "workflow" / "profiles" / "default"), *arguments]
    # Rules call `deeprs`: this interpreter's scripts first on the PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def planned_jobs(output: str) -> Counter[str]:
    """Job counts of a dry run's 'Job stats' table."""
    table = output.split("Job stats:")[1].split("total")[0]
    return Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)})


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("smoke")
    finished = snakemake(workdir, SMOKE, "reproduce")
    assert finished.returncode == 0, finished.stderr[-4000:]
    return workdir


def test_every_method_and_study_has_metrics_and_the_report_is_written(smoke_run: Path) -> None:
    config = yaml.safe_load(SMOKE.read_text())
    from deeprs.config import validate_config

    config = validate_config(config)
    results = smoke_run / config["results"]
    methods = dict.fromkeys(config["methods"] + config["ablation"])
    for method in methods:
        for fold in range(config["folds"]["n_folds"]):
            metrics = pd.read_csv(results / method / f"fold_{fold}" / "metrics.csv")
            assert set(metrics["structure"]) == set(config["data"]["labels"])
            assert metrics["method"].eq(method).all()
    for method in config["label_amount_methods"]:
        assert (results / "label_amount" / method / "labels_1_rep_0" / "metrics.csv").is_file()
    table1 = pd.read_csv(results / "report" / "table1.csv")
    assert len(table1) == len(config["methods"])
    for name in ("boxplot_registration.png", "label_amount.png", "overlays_segmentation.png"):
        assert (results / "report" / name).stat().st_size > 0


def test_second_run_does_nothing(smoke_run: Path) -> None:
    again = snakemake(smoke_run, SMOKE, "-n", "reproduce")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Nothing to be done" in again.stdout + again.stderr


def test_single_fold_rerun_rebuilds_that_fold_only(smoke_run: Path) -> None:
    target = "results/smoke/deeprs/fold_1/metrics.csv"
    rerun = snakemake(smoke_run, SMOKE, "-n", "--forcerun", "train", "--", target)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert planned_jobs(rerun.stdout) == Counter({"train": 1, "evaluate": 1})
    assert "results/smoke/deeprs/fold_1/model.pt" in rerun.stdout
    assert "fold_0" not in rerun.stdout


def test_presets_write_to_their_own_results_folders(smoke_run: Path) -> None:
    """After the smoke study, the demo preset plans its own phantom and preprocessing under
    results/demo and names nothing of results/smoke; the smoke study stays complete."""
    demo = snakemake(smoke_run, DEMO, "-n", "reproduce")
    assert demo.returncode == 0, demo.stderr[-2000:]
    jobs = planned_jobs(demo.stdout)
    assert jobs["phantom"] == 1 and jobs["preprocess"] == 1
    assert "results/demo/preprocessed/manifest.json" in demo.stdout
    assert "results/smoke" not in demo.stdout and "logs/smoke" not in demo.stdout
    again = snakemake(smoke_run, SMOKE, "-n", "reproduce")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_demo_preset_plans_every_method_fold_and_label_study_job(tmp_path: Path) -> None:
    dry = snakemake(tmp_path, DEMO, "-n", "reproduce")
    assert dry.returncode == 0, dry.stderr[-2000:]
    from deeprs.config import load_config
    from deeprs.methods import get_method

    config = load_config(DEMO)
    folds = config["folds"]
    trained = [
        m for m in dict.fromkeys(config["methods"] + config["ablation"]) if get_method(m).trains
    ]
    label_runs = len(config["label_amount_methods"]) * len(folds["label_amounts"])
    label_runs *= folds["label_amount_repeats"]
    jobs = planned_jobs(dry.stdout)
    assert jobs["train"] == len(trained) * folds["n_folds"] + label_runs
    assert (
        jobs["evaluate"]
        == len(dict.fromkeys(config["methods"] + config["ablation"])) * folds["n_folds"]
        + label_runs
    )
    for method in trained:
        for fold in range(folds["n_folds"]):
            assert f"results/demo/{method}/fold_{fold}/model.pt" in dry.stdout


def test_fold_search_plans_every_registration_method_at_every_weight(tmp_path: Path) -> None:
    config = yaml.safe_load(DEMO.read_text())
    config["budget"] = {"fold_weights": [1, 100], "split": "fold_0"}
    preset = tmp_path / "fold_search.yaml"
    preset.write_text(yaml.safe_dump(config, sort_keys=False))
    dry = snakemake(tmp_path, preset, "-n", "fold_search")
    assert dry.returncode == 0, dry.stderr[-2000:]
    registration = ["voxelmorph2", "advreg", "deepatlas", "hybridcnn", "deeprs"]
    assert planned_jobs(dry.stdout)["train_search"] == 2 * len(registration)
    for weight in ("1", "100"):
        for method in registration:
            assert f"results/demo/budget/fold_{weight}/{method}/fold_0/model.pt" in dry.stdout
    assert '"fold": 100.0' in dry.stdout and '"fold": 1.0' in dry.stdout


def test_budget_search_plans_every_training_method_at_every_rate(tmp_path: Path) -> None:
    config = yaml.safe_load(DEMO.read_text())
    config["budget"] = {"lrs": [0.001, 0.003], "iterations": 50, "split": "fold_0"}
    preset = tmp_path / "budget.yaml"
    preset.write_text(yaml.safe_dump(config, sort_keys=False))
    dry = snakemake(tmp_path, preset, "-n", "budget")
    assert dry.returncode == 0, dry.stderr[-2000:]
    from deeprs.config import load_config
    from deeprs.methods import get_method

    methods = load_config(preset)["methods"]
    trained = [m for m in dict.fromkeys(methods) if get_method(m).trains]
    assert planned_jobs(dry.stdout)["train_search"] == 2 * len(trained)
    for lr in ("0.001", "0.003"):
        for method in trained:
            assert f"results/demo/budget/lr_{lr}/{method}/fold_0/model.pt" in dry.stdout
    assert '"lr": 0.003' in dry.stdout and '"iterations": 50' in dry.stdout
    weight = config["train"]["weights"]["fold"]
    assert f'"fold": {weight}' in dry.stdout  # the preset's penalty, untouched


def _variant(tmp_path: Path, section: str, key: str, value: object) -> Path:
    config = yaml.safe_load(SMOKE.read_text())
    config[section][key] = value
    path = tmp_path / f"{section}_{key}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))  # label order is a setting
    return path


def test_a_setting_reruns_what_reads_it_and_a_job_option_nothing(
    smoke_run: Path, tmp_path: Path
) -> None:
    """The train section reaches `deeprs train` as one params value: a new learning rate
    reruns training (and what follows), more threads for the same run rerun nothing."""
    config = yaml.safe_load(SMOKE.read_text())
    lr = snakemake(smoke_run, _variant(tmp_path, "train", "lr", 0.001), "-n", "reproduce")
    assert lr.returncode == 0, lr.stderr[-2000:]
    jobs = planned_jobs(lr.stdout)
    assert jobs["train"] > 0 and "phantom" not in jobs and "split" not in jobs
    threads = config["train"]["threads"] + 1
    same = snakemake(smoke_run, _variant(tmp_path, "train", "threads", threads), "-n", "reproduce")
    assert same.returncode == 0, same.stderr[-2000:]
    assert "Nothing to be done" in same.stdout + same.stderr


def test_building_the_dag_does_not_import_torch(tmp_path: Path) -> None:
    command = [sys.executable, "-X", "importtime", "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    command += ["--cores", "2", "--configfile", str(DEMO), "--directory", str(tmp_path), "-n"]
    dry = subprocess.run(command, capture_output=True, text=True, check=False)
    assert dry.returncode == 0, dry.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in dry.stderr.splitlines()]
    assert "deeprs.methods" in imported
    assert "torch" not in imported
