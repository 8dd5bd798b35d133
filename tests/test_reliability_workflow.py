"""The whole workflow as a user runs it: inputs are never written, outputs land only under
``results/`` and logs under ``logs/``, two runs of one config give the same results (CPU),
and a run killed halfway is redone by ``--rerun-incomplete`` (in the default profile).

The study is cut to a couple of minutes: 4 labelled + 1 unlabelled synthetic CTs read from
a user folder (``data.source: folder``), 2 folds, DeepRS and Affine, one label-amount run.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from deeprs.cli import main

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "default"
LABELS = {"myo": 205, "la": 420, "lv": 500, "ra": 550, "rv": 600, "aa": 820, "pa": 850}
# What a run may create in its working folder (Snakemake keeps its state in .snakemake/).
ALLOWED_TOP_LEVEL = {"results", "logs", ".snakemake"}


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def snakemake(
    workdir: Path, configfile: Path, *targets: str, profile: bool = True, **popen: object
) -> list[str]:
    """The command line of a user's run in ``workdir`` (with the default profile)."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    command += ["--configfile", str(configfile), "--directory", str(workdir), "--cores", "2"]
    if profile:
        command += ["--workflow-profile", str(PROFILE)]
    return [*command, *targets]


def environment() -> dict[str, str]:
    """Rules call `deeprs`: this interpreter's scripts folder first on the PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, env=environment(), check=False)


def start_snakemake_until(
    workdir: Path,
    configfile: Path,
    target: str,
    log_path: Path,
    ready: Callable[[], bool],
    deadline: float,
) -> subprocess.Popen:
    """Start Snakemake on ``target`` in a session of its own; return once ``ready()`` holds.

    The caller kills it there. Fails if Snakemake ends first or the ``time.monotonic()``
    ``deadline`` passes.
    """
    with open(log_path, "w") as log:
        job = subprocess.Popen(
            snakemake(workdir, configfile, target),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment(),
            start_new_session=True,
        )
    while not ready():
        assert job.poll() is None, log_path.read_text()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return job


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A user's cohort folder (read-only to us), its checksums, and two full runs of it."""
    base = tmp_path_factory.mktemp("study")
    data = base / "my_scans"
    arguments = ["phantom", "--out", str(data), "--n-labelled", "4", "--n-unlabelled", "1"]
    arguments += ["--shape", "40", "40", "24", "--spacing", "6", "6", "9", "--seed", "3"]
    assert main(arguments) == 0
    config = {
        "seed": 11,
        "data": {"source": "folder", "dir": str(data), "labels": LABELS},
        "preprocess": {"target_shape": [32, 32, 16]},
        "folds": {"n_folds": 2, "label_amounts": [1], "label_amount_repeats": 1},
        "train": {"device": "cpu", "threads": 1, "iterations": 4, "width": 0.25},
        "methods": ["affine", "deeprs"],
        "ablation": ["deeprs"],
        "label_amount_methods": ["unet3d"],
    }
    configfile = base / "study.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    before = checksums(data)
    workdirs = [base / "first", base / "second"]
    for workdir in workdirs:
        finished = run(snakemake(workdir, configfile, "reproduce"))
        assert finished.returncode == 0, finished.stderr[-3000:]
    return {"data": data, "before": before, "workdirs": workdirs, "configfile": configfile}


def test_inputs_are_unchanged_and_outputs_stay_in_results_and_logs(study: dict) -> None:
    assert checksums(study["data"]) == study["before"]
    for workdir in study["workdirs"]:
        assert {path.name for path in workdir.iterdir()} == ALLOWED_TOP_LEVEL
        results = {p.relative_to(workdir / "results") for p in (workdir / "results").rglob("*")}
        # Nothing half-written or left from training: no temporaries, no checkpoint.
        assert not [p for p in results if p.name.startswith(".") or p.name == "checkpoint.pt"]
        assert Path("report/table1.csv") in results
        logs = sorted((workdir / "logs").rglob("*.log"))
        assert {log.relative_to(workdir / "logs").as_posix() for log in logs} >= {
            "preprocess.log",
            "split.log",
            "deeprs/fold_0/train.log",
            "deeprs/fold_1/evaluate.log",
            "report.log",
        }


def test_two_runs_of_one_config_give_identical_results_on_the_cpu(study: dict) -> None:
    first, second = (workdir / "results" for workdir in study["workdirs"])
    compared = [
        "preprocessed/manifest.json",
        "splits/fold_0.json",
        "splits/fold_1.json",
        "splits/labels_1_rep_0.json",
        "affine/fold_0/metrics.csv",
        "deeprs/fold_0/metrics.csv",
        "deeprs/fold_1/metrics.csv",
        "deeprs/fold_1/losses.csv",
        "deeprs/fold_1/model.pt",
        "label_amount/unet3d/labels_1_rep_0/metrics.csv",
        "report/table1.csv",
    ]
    compared += [
        f"preprocessed/{kind}/{path.name}"
        for kind in ("images", "labels")
        for path in sorted((first / "preprocessed" / kind).iterdir())
    ]
    different = [name for name in compared if not filecmp.cmp(first / name, second / name, False)]
    assert not different, f"differ between two runs of one config: {different}"


def test_training_killed_under_snakemake_resumes_from_its_checkpoint(
    study: dict, tmp_path: Path
) -> None:
    """The study again with longer training; Snakemake and its jobs are killed once the
    first checkpoint exists. After `--unlock`, the same command resumes the training (its
    log says so) instead of starting over."""
    workdir = Path(shutil.copytree(study["workdirs"][0], tmp_path / "work", symlinks=True))
    config = yaml.safe_load(study["configfile"].read_text())
    config["train"].update(iterations=40, checkpoint_every=2)
    configfile = tmp_path / "longer.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    target = "results/deeprs/fold_0/model.pt"
    checkpoint = workdir / "results" / "deeprs" / "fold_0" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    job = start_snakemake_until(
        workdir, configfile, target, tmp_path / "killed.log", checkpoint.exists, deadline
    )
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    saved_at = torch.load(checkpoint, weights_only=True)["iteration"]

    assert run(snakemake(workdir, configfile, "--unlock")).returncode == 0
    resumed = run(snakemake(workdir, configfile, target))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    train_log = (workdir / "logs" / "deeprs" / "fold_0" / "train.log").read_text()
    assert (
        f"resuming deeprs on fold_0 from results/deeprs/fold_0/checkpoint.pt at iteration "
        f"{saved_at}" in train_log
    )
    assert torch.load(workdir / target, weights_only=True)["iteration"] == 40
    assert not checkpoint.exists()


def test_snakemake_killed_mid_job_is_redone_with_rerun_incomplete(tmp_path: Path) -> None:
    """Snakemake killed (as by a lost session) while its phantom job runs on and writes
    every output: without the profile Snakemake refuses those outputs as incomplete, with
    it (``rerun-incomplete: true``) the job is redone, and the files are those of an
    uninterrupted `deeprs phantom` run."""
    configfile = REPO / "config" / "smoke.yaml"
    workdir = tmp_path / "work"
    relative_target = "results/smoke/data/phantom/mosaic.png"
    target = workdir / relative_target
    first_files = target.parent / "ct_train"
    deadline = time.monotonic() + 300
    job = start_snakemake_until(
        workdir,
        configfile,
        relative_target,
        tmp_path / "killed.log",
        lambda: first_files.is_dir() and any(first_files.glob("*.nii.gz")),
        deadline,
    )
    job.kill()
    job.wait(timeout=60)
    while not target.exists():  # the orphaned job finishes its outputs
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)
    with contextlib.suppress(ProcessLookupError):  # whatever is left of the killed run
        os.killpg(job.pid, signal.SIGKILL)

    # A killed Snakemake leaves its lock: the next run says to remove it with --unlock.
    locked = run(snakemake(workdir, configfile, relative_target))
    assert locked.returncode != 0 and "--unlock" in locked.stderr
    assert run(snakemake(workdir, configfile, "--unlock")).returncode == 0

    refused = run(snakemake(workdir, configfile, relative_target, profile=False))
    assert refused.returncode != 0
    assert "--rerun-incomplete" in refused.stderr

    redone = run(snakemake(workdir, configfile, relative_target))
    assert redone.returncode == 0, redone.stderr[-3000:]
    settings = yaml.safe_load(configfile.read_text())
    phantom = settings["phantom"]
    reference = tmp_path / "reference"
    arguments = ["phantom", "--out", str(reference), "--seed", str(settings["seed"])]
    arguments += ["--n-labelled", str(phantom["n_labelled"])]
    arguments += ["--n-unlabelled", str(phantom["n_unlabelled"])]
    arguments += [
        "--shape",
        *map(str, phantom["shape"]),
        "--spacing",
        *map(str, phantom["spacing"]),
    ]
    assert main(arguments) == 0
    assert "rule phantom" in redone.stderr
    produced = checksums(target.parent)
    assert produced == checksums(reference)


def test_broken_file_stops_the_workflow_with_its_one_line_error(tmp_path: Path) -> None:
    """A truncated scan in the user's folder: Snakemake (default profile) prints the job's
    one-sentence error, writes no manifest, and leaves the folder as it was."""
    data = tmp_path / "my_scans"
    arguments = ["phantom", "--out", str(data), "--n-labelled", "2", "--n-unlabelled", "1"]
    arguments += ["--shape", "32", "32", "20", "--spacing", "8", "8", "12", "--seed", "4"]
    assert main(arguments) == 0
    broken = data / "ct_train" / "ct_train_1001_image.nii.gz"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    before = checksums(data)
    configfile = tmp_path / "study.yaml"
    config = {"data": {"source": "folder", "dir": str(data), "labels": LABELS}}
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    workdir = tmp_path / "work"
    finished = run(snakemake(workdir, configfile, "reproduce"))
    assert finished.returncode != 0
    assert (
        f"deeprs preprocess: error: '{broken}' cannot be read as an image (Compressed file "
        "ended before the end-of-stream marker was reached); replace the file (it may be "
        "truncated or not a NIfTI/MHA/NRRD file)"
    ) in finished.stdout + finished.stderr
    assert checksums(data) == before
    assert not (workdir / "results" / "preprocessed" / "manifest.json").exists()
