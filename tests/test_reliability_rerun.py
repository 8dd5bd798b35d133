"""Outputs of a killed job never stay trusted: a real Snakemake run on the smoke preset.

A forced retraining (``--forcerun train``) killed with SIGKILL once Snakemake has removed a
model to rebuild it leaves the old metrics of that model on disk. A plain rerun must
retrain the model and redo everything computed from it (metrics, report), not call the
study finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch
import yaml
from test_reliability_workflow import environment, run, snakemake

REPO = Path(__file__).resolve().parents[1]


def test_a_killed_forced_retraining_is_redone_with_everything_downstream(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    # The smoke preset with fewer rows, so that the study runs in about a minute.
    config.update(methods=["affine", "unet3d"], ablation=["unet3d"])
    config.update(label_amount_methods=["unet3d"])
    configfile = tmp_path / "smoke.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    workdir = tmp_path / "work"
    first = run(snakemake(workdir, configfile, "reproduce"))
    assert first.returncode == 0, first.stderr[-3000:]
    results = workdir / config["results"]
    model = results / "unet3d" / "fold_0" / "model.pt"
    metrics = results / "unet3d" / "fold_0" / "metrics.csv"
    table = results / "report" / "table1.csv"
    before = {path: path.stat().st_mtime_ns for path in (metrics, table)}

    with open(tmp_path / "killed.log", "w") as log:
        job = subprocess.Popen(
            snakemake(workdir, configfile, "reproduce", "--forcerun", "train"),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment(),
            start_new_session=True,
        )
    deadline = time.monotonic() + 300
    while model.exists():  # Snakemake removes a job's outputs just before it runs it
        assert job.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    assert metrics.exists() and metrics.stat().st_mtime_ns == before[metrics]

    assert run(snakemake(workdir, configfile, "--unlock")).returncode == 0
    rerun = run(snakemake(workdir, configfile))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Nothing to be done" not in rerun.stderr
    assert torch.load(model, weights_only=True)["iteration"] == config["train"]["iterations"]
    assert metrics.stat().st_mtime_ns > model.stat().st_mtime_ns > before[metrics]
    assert table.stat().st_mtime_ns > metrics.stat().st_mtime_ns
    again = run(snakemake(workdir, configfile, "-n"))
    assert "Nothing to be done" in again.stdout + again.stderr
