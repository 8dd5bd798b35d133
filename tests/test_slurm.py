"""The SLURM profile, run for real: a single-node Slurm on loopback runs the smoke workflow.

Needs root and the Debian `slurm-wlm` and `munge` packages (`.ci/run` installs them);
elsewhere it skips and says why. The cluster's node advertises two GPUs that do not exist,
16 CPUs and 64 GB (see tests/slurm/cluster.py), so the profile's requests are submitted
unchanged: training jobs carry `--gpus=1` and run on the CPU (the smoke config says
`device: cpu`). The smoke config is narrowed to two methods and two folds to keep the run
to a few minutes; every step of the workflow still runs (phantom to report).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
from cluster import missing_requirement, single_node_slurm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
RUN_TIMEOUT_S = 1500
NARROWER_SMOKE = """\
methods: [affine, deeprs]
ablation: [deeprs]
label_amount_methods: [deeprs]
folds: {n_folds: 2, label_amounts: [1], label_amount_repeats: 1}
"""


def _skip_reason() -> str | None:
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return 'snakemake-executor-plugin-slurm is not installed: pip install -e ".[slurm]"'
    return missing_requirement()


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
]


def _local_rules() -> set[str]:
    """Rules the workflow declares with `localrules:` (they must never become Slurm jobs)."""
    sources = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    names: set[str] = set()
    for source in sources:
        # The names follow on the same line or on the indented lines below it.
        for match in re.finditer(
            r"^localrules:(.*(?:\n[ \t]+.*)*)", source.read_text(), re.MULTILINE
        ):
            names.update(name for name in re.split(r"[,\s]+", match.group(1)) if name)
    return names


def _job_list(cluster) -> list[dict[str, str]]:
    """Every job the cluster has seen: id, state, the executor's rule comment, GPU request."""
    fields = "JobID:12,State:12,Comment:80,tres-per-job:20"
    lines = cluster.run("squeue", "--states=all", "--noheader", "-O", fields).splitlines()
    jobs = []
    for line in lines:
        job_id, state, comment, tres = (line[0:12], line[12:24], line[24:104], line[104:124])
        jobs.append(
            {
                "id": job_id.strip(),
                "state": state.strip(),
                "rule": comment.strip().removeprefix("rule_").split("_wildcards_")[0],
                "comment": comment.strip(),
                "tres": tres.strip(),
            }
        )
    return jobs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    with single_node_slurm(root, gpus=2, cpus=16, memory_mb=65536) as running:
        yield running


def test_smoke_workflow_runs_through_the_slurm_executor(cluster, tmp_path):
    workdir = tmp_path / "repo"
    workdir.mkdir()
    shutil.copy(REPO / "Snakefile", workdir)
    shutil.copytree(REPO / "workflow", workdir / "workflow")
    shutil.copytree(REPO / "config", workdir / "config")
    (workdir / "narrower_smoke.yaml").write_text(NARROWER_SMOKE)
    env = cluster.env
    env["PATH"] = f"{env['PATH']}{os.pathsep}{Path(sys.executable).parent}"
    command = [
        str(Path(sys.executable).parent / "snakemake"),
        "--profile",
        str(PROFILE),
        "--configfile",
        "config/smoke.yaml",
        "narrower_smoke.yaml",
        # No accounting database here: sacct has nothing, squeue keeps finished jobs
        # (MinJobAge=3600); poll every few seconds instead of the default 40.
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-keep-successful-logs",
        "reproduce",
    ]
    log = tmp_path / "snakemake.log"
    with open(log, "w") as handle:
        try:
            finished = subprocess.run(
                command,
                cwd=workdir,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=RUN_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"the SLURM smoke run took over {RUN_TIMEOUT_S} s; log: {log}")

    jobs = _job_list(cluster)
    table = "\n".join(f"{j['id']:>4} {j['state']:<10} {j['tres']:<12} {j['comment']}" for j in jobs)
    print(f"Slurm jobs of the smoke run:\n{table}")
    (tmp_path / "jobs.txt").write_text(table + "\n")
    assert finished.returncode == 0, f"snakemake failed:\n{log.read_text()[-4000:]}\n{table}"

    assert (workdir / "results" / "smoke" / "report" / "table1.csv").is_file()
    assert jobs and all(job["state"] == "COMPLETED" for job in jobs), table
    rules = {job["rule"] for job in jobs}
    assert {"phantom", "train", "evaluate"} <= rules, table
    for job in jobs:
        if job["rule"] == "train":
            assert job["tres"] == "gres:gpu:1", f"training job without one GPU:\n{table}"
    assert not rules & _local_rules(), f"a local rule was submitted to Slurm:\n{table}"
