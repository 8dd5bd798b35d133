"""Config mistakes that used to pass: a label table with a clash, unknown method names, YAML
errors. Each is one line naming the key (or the file, line and column), from `deeprs
check-config` and from Snakemake's own validation alike, before anything runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deeprs.cli import main
from deeprs.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
LABELS = {"myo": 205, "la": 420, "lv": 500}


def config_text(**top_level: object) -> str:
    config = {"data": {"source": "phantom", "dir": "results/data/phantom", "labels": LABELS}}
    config.update(top_level)
    return yaml.safe_dump(config, sort_keys=False)


KNOWN = str(list(METHODS))
MISTAKES = {
    "two structures share a value": (
        config_text(data={"source": "phantom", "dir": "d", "labels": {"lv": 500, "heart": 500}}),
        "config key 'data.labels': 'lv' and 'heart' share value 500; give each structure its "
        "own value",
    ),
    "a structure takes the background's value": (
        config_text(data={"source": "phantom", "dir": "d", "labels": {"bg": 0, "lv": 500}}),
        "config key 'data.labels.bg': value 0 is the background; leave the background out of "
        "the table and give each structure its value (>= 1)",
    ),
    "two names differ only in case": (
        config_text(data={"source": "phantom", "dir": "d", "labels": {"lv": 500, "LV": 600}}),
        "config key 'data.labels': 'lv' and 'LV' differ only in case; give each structure one name",
    ),
    "unknown method": (
        config_text(methods=["affine", "unet3dd"]),
        f"config key 'methods.1': 'unet3dd' is not one of {KNOWN}",
    ),
    "unknown ablation row": (
        config_text(ablation=["ablation_r", "ablation_rx"]),
        f"config key 'ablation.1': 'ablation_rx' is not one of {KNOWN}",
    ),
    "unknown label-amount method": (
        config_text(label_amount_methods=["unet"]),
        f"config key 'label_amount_methods.0': 'unet' is not one of {KNOWN}",
    ),
}
YAML_MISTAKES = {
    "unclosed list": (
        "data:\n  source: phantom\n  dir: d\n  labels: {lv: 500}\ntrain:\n  iterations: [4\n",
        "line 7, column 1: expected ',' or ']', but got '<stream end>' (while parsing a flow "
        "sequence at line 6, column 15); fix the YAML there",
    ),
    "tab indentation": (
        "data:\n  source: phantom\n\tdir: d\n",
        "line 3, column 1: found character '\\t' that cannot start any token (while scanning "
        "for the next token); fix the YAML there",
    ),
    "a label given twice": (
        "data:\n  source: phantom\n  dir: d\n  labels:\n    lv: 500\n    myo: 205\n    lv: 600\n",
        "line 7, column 5: key 'lv' is given twice in one mapping; fix the YAML there",
    ),
}


def snakemake_dry_run(workdir: Path, *options: str) -> str:
    """`snakemake -n` in ``workdir``; returns what it printed (it must fail)."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n"]
    result = subprocess.run(
        [*command, "--cores", "1", *options],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "MissingInput" not in output, output[-2000:]
    return output


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_check_config_names_the_key(mistake: str, tmp_path: Path, capsys) -> None:
    text, message = MISTAKES[mistake]
    path = tmp_path / "study.yaml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err == f"deeprs check-config: error: {path}: {message}\n"


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_snakemake_names_the_key(mistake: str, tmp_path: Path) -> None:
    text, message = MISTAKES[mistake]
    (tmp_path / "study.yaml").write_text(text)
    output = snakemake_dry_run(tmp_path, "--configfile", "study.yaml")
    assert f"deeprs: {message}\n" in output


@pytest.mark.parametrize("mistake", list(YAML_MISTAKES))
def test_check_config_gives_the_line_and_column_of_a_yaml_mistake(
    mistake: str, tmp_path: Path, capsys
) -> None:
    text, message = YAML_MISTAKES[mistake]
    path = tmp_path / "study.yaml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    assert (
        capsys.readouterr().err == f"deeprs check-config: error: config file '{path}', {message}\n"
    )


@pytest.mark.parametrize("mistake", list(YAML_MISTAKES))
def test_snakemake_gives_the_line_and_column_of_a_yaml_mistake(
    mistake: str, tmp_path: Path
) -> None:
    """The demo preset config/config.yaml, as `make reproduce` reads it."""
    text, message = YAML_MISTAKES[mistake]
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(text)
    output = snakemake_dry_run(tmp_path)
    assert f"deeprs: config file 'config/config.yaml', {message}\n" in output


def test_snakemake_finds_a_key_given_twice_in_a_configfile(tmp_path: Path) -> None:
    """Snakemake parses a --configfile itself and keeps the last of two equal keys."""
    text, message = YAML_MISTAKES["a label given twice"]
    (tmp_path / "study.yaml").write_text(text)
    output = snakemake_dry_run(tmp_path, "--configfile", "study.yaml")
    assert f"config file '{tmp_path / 'study.yaml'}', {message}\n" in output
