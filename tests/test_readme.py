"""Every command of the README's ```bash blocks runs as written, in a fresh copy of the repo.

The rule: each line of a ```bash block in README.md is one command (a trailing ``# ...``
comment is dropped). They run in README order, in one copy of what a clone holds
(``copy_checkout``), so a later command sees what an earlier one made (``--report`` reads
the study that ``snakemake ... reproduce`` ran). In that copy the demo preset
(``config/config.yaml``) is shrunk to test size (the smoke preset's cohort, 2 folds and 4
iterations, two methods; the demo's results folder) and the MM-WHS preset reads the copy's
demo phantom, so the commands keep the text users see.
Commands that install software, start the test suite or need a cluster are dry-run, by
``DRY_RUNS`` (first match on the command's start): ``make X`` -> ``make -n X``, ``pip
install`` -> ``pip install --dry-run``, ``pytest`` -> ``pytest --collect-only``; Snakemake
with the SLURM profile or the ``bench`` target -> ``snakemake -n`` (``tests/test_slurm.py``
runs that profile on a real one-node Slurm). Everything else runs for real and must exit 0.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_checkout

README = REPO / "README.md"
DEMO_AT_TEST_SIZE = {  # the smoke preset's sizes, with two methods (affine, deeprs)
    "methods": ["affine", "deeprs"],
    "ablation": ["deeprs"],
    "label_amount_methods": ["deeprs"],
    "phantom": {
        "n_labelled": 6,
        "n_unlabelled": 2,
        "shape": [64, 64, 40],
        "spacing": [4.0, 4.0, 6.0],
    },
    "preprocess": {"target_shape": [32, 32, 16]},
    "folds": {"n_folds": 2, "label_amounts": [1], "label_amount_repeats": 1},
    "train": {"device": "cpu", "threads": 1, "iterations": 4, "width": 0.25, "checkpoint_every": 2},
}


def _insert_after_first(word: str, flag: str) -> Callable[[list[str]], list[str]]:
    def dry(argv: list[str]) -> list[str]:
        at = argv.index(word) + 1
        return [*argv[:at], flag, *argv[at:]]

    return dry


def _is_snakemake_with(*needles: str) -> Callable[[list[str]], bool]:
    return lambda argv: argv[0] == "snakemake" and any(n in argv for n in needles)


# (matches, dry-run form, why): the first entry that matches a command decides.
DRY_RUNS: list[tuple[Callable[[list[str]], bool], Callable[[list[str]], list[str]], str]] = [
    (lambda a: a[0] == "make", _insert_after_first("make", "-n"), "installs into .venv"),
    (
        lambda a: a[:2] == ["pip", "install"],
        _insert_after_first("install", "--dry-run"),
        "installs",
    ),
    (lambda a: a[0] == "pytest", lambda a: [*a, "--collect-only", "-q"], "the suite itself"),
    (
        _is_snakemake_with("workflow/profiles/slurm"),
        _insert_after_first("snakemake", "-n"),
        "submits to Slurm",
    ),
    (
        _is_snakemake_with("bench"),
        _insert_after_first("snakemake", "-n"),
        "times the paper size (minutes)",
    ),
]


def readme_commands(text: str) -> list[str]:
    """The lines of the ```bash blocks, comments dropped, in order (```python blocks run whole)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def as_tested(command: str) -> tuple[list[str], str]:
    """The argv that the test runs for ``command``, and ``real`` or why it is dry-run."""
    argv = shlex.split(command)
    for matches, dry, why in DRY_RUNS:
        if matches(argv):
            return dry(argv), f"dry-run: {why}"
    return argv, "real"


def test_every_command_is_in_a_bash_block_and_the_key_ones_are_there() -> None:
    text = README.read_text()
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert {language for language, _ in blocks} <= {"bash", "python", ""}
    programs = ("snakemake", "deeprs", "make", "pip", "pytest", "python")
    for language, body in blocks:
        if language == "":  # e.g. the layout: no command hides in an untested block
            hidden = [line for line in body.splitlines() if line and line.split()[0] in programs]
            assert not hidden, hidden
    commands = readme_commands(text)
    joined = "\n".join(commands)
    for needed in (
        "make reproduce",
        "snakemake --unlock",
        "snakemake --report results/demo/report.html",
        "--forcerun train -- results/demo/deeprs/fold_1/metrics.csv",
        "--configfile config/smoke.yaml -- results/smoke/deeprs/fold_1/metrics.csv",
        "snakemake --profile workflow/profiles/slurm --configfile config/mmwhs.yaml -- reproduce",
        "deeprs check-config config/smoke.yaml",
    ):
        assert needed in joined, needed


def test_no_target_follows_an_option_that_takes_several_values() -> None:
    """`--configfile a.yaml target` reads the target as a config file: targets go after
    `--` (or first)."""
    multi_valued = {"--configfile", "--configfiles", "--forcerun", "-R", "--config", "--until"}
    for command in readme_commands(README.read_text()):
        argv = shlex.split(command)
        if argv[0] != "snakemake":
            continue
        for index, word in enumerate(argv):
            if word in multi_valued:
                rest = argv[index + 1 :]
                values = rest[: rest.index("--")] if "--" in rest else rest
                options = [value for value in values if value.startswith("-")]
                assert len(values) == 1 or options, (
                    f"{command!r}: {values[1:]} read as {word} values"
                )


def test_the_dry_run_rule_marks_installs_and_clusters_only() -> None:
    assert as_tested("make reproduce") == (
        ["make", "-n", "reproduce"],
        "dry-run: installs into .venv",
    )
    assert as_tested('pip install -e ".[test]"')[0] == [
        "pip",
        "install",
        "--dry-run",
        "-e",
        ".[test]",
    ]
    assert as_tested("snakemake --unlock") == (["snakemake", "--unlock"], "real")
    assert as_tested("snakemake --cores all bench")[0][:2] == ["snakemake", "-n"]
    assert as_tested("snakemake --cores all reproduce")[1] == "real"


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = copy_checkout(tmp_path_factory.mktemp("clone"))
    demo = yaml.safe_load((copy / "config" / "config.yaml").read_text())
    demo.update(DEMO_AT_TEST_SIZE)
    (copy / "config" / "config.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    mmwhs = yaml.safe_load((copy / "config" / "mmwhs.yaml").read_text())
    mmwhs["data"]["dir"] = str(copy / demo["data"]["dir"])  # generated by the demo run
    (copy / "config" / "mmwhs.yaml").write_text(yaml.safe_dump(mmwhs, sort_keys=False))
    return copy


@pytest.mark.slow
def test_every_readme_command_runs_as_written(fresh_copy: Path, tmp_path: Path) -> None:
    # This interpreter's scripts (snakemake, deeprs, pip, pytest) first; the copy's package.
    scripts = Path(sys.executable).parent
    environment = {
        **os.environ,
        "PATH": f"{scripts}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(fresh_copy), os.environ.get("PYTHONPATH")])
        ),
    }
    has_slurm_plugin = importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None
    outcomes, failures = [], []
    for command in readme_commands(README.read_text()):
        argv, mode = as_tested(command)
        if "workflow/profiles/slurm" in argv and not has_slurm_plugin:
            outcomes.append(f"SKIPPED ({mode}; no snakemake-executor-plugin-slurm): {command}")
            continue
        started = time.monotonic()
        finished = subprocess.run(
            argv, cwd=fresh_copy, env=environment, capture_output=True, text=True, check=False
        )
        seconds = time.monotonic() - started
        outcome = f"exit {finished.returncode} in {seconds:.0f} s ({mode}): {command}"
        outcomes.append(outcome)
        if finished.returncode != 0:
            failures.append(f"{outcome}\n{(finished.stdout + finished.stderr)[-3000:]}")
    for snippet in re.findall(
        r"^```python\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL
    ):
        finished = subprocess.run(
            [sys.executable, "-c", snippet],
            cwd=fresh_copy,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        outcome = f"exit {finished.returncode} (python block): {snippet.splitlines()[0]} ..."
        outcomes.append(outcome)
        if finished.returncode != 0:
            failures.append(f"{outcome}\n{finished.stderr[-3000:]}")
    report = "\n".join(outcomes)
    print(report)
    (tmp_path / "readme_commands.txt").write_text(report + "\n")
    assert not failures, "\n\n".join(failures)
    html = fresh_copy / "results" / "demo" / "report.html"
    assert html.is_file() and html.stat().st_size > 100_000
    subset = fresh_copy / "results" / "demo" / "report_subset" / "table1.csv"
    assert subset.is_file()
    # The subset went to its own folder: the study's table still has every method.
    study = (fresh_copy / "results" / "demo" / "report" / "table1.csv").read_text()
    assert all(method in study for method in DEMO_AT_TEST_SIZE["methods"])
    assert (fresh_copy / "results" / "smoke" / "deeprs" / "fold_1" / "metrics.csv").is_file()
    assert not (fresh_copy / "results" / "smoke" / "deeprs" / "fold_0").exists()


def test_make_setup_takes_the_cpu_torch_build_without_an_nvidia_gpu(tmp_path: Path) -> None:
    """`make -n setup` in a fresh folder: PyTorch's CPU index unless `nvidia-smi` is found;
    TORCH_INDEX overrides both ways. Nothing is installed (dry-run)."""
    fake_gpu = tmp_path / "gpu"
    fake_gpu.mkdir()
    (fake_gpu / "nvidia-smi").write_text("#!/bin/sh\n")
    (fake_gpu / "nvidia-smi").chmod(0o755)
    plain_path = os.pathsep.join(
        folder
        for folder in os.environ["PATH"].split(os.pathsep)
        if not (Path(folder) / "nvidia-smi").exists()
    )

    def torch_line(path: str, *variables: str) -> str:
        command = ["make", "-n", "setup", f"VENV={tmp_path / 'venv'}", *variables]
        shown = subprocess.run(
            command,
            cwd=REPO,
            env={**os.environ, "PATH": path},
            capture_output=True,
            text=True,
            check=True,
        )
        (line,) = [
            line for line in shown.stdout.splitlines() if "pip install" in line and "torch" in line
        ]
        return line

    cpu = "--index-url https://download.pytorch.org/whl/cpu"
    install = 'pip install --retries 1 "torch==2.13.0"'  # one retry: see the Makefile
    assert torch_line(plain_path).endswith(f"{install} {cpu}")
    assert torch_line(f"{fake_gpu}{os.pathsep}{plain_path}").endswith(install)
    assert torch_line(plain_path, "TORCH_INDEX=").endswith(install)
    cuda = "https://download.pytorch.org/whl/cu126"
    assert torch_line(f"{fake_gpu}{os.pathsep}{plain_path}", f"TORCH_INDEX={cuda}").endswith(
        f"--index-url {cuda}"
    )
