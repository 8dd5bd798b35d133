"""Config validation: every preset is valid; each kind of mistake gets its own one-line message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deeprs.cli import main as deeprs_main
from deeprs.config import (
    JOB_KEYS,
    job_defaults,
    load_config,
    read_section,
    schema_path,
    section_defaults,
    section_json,
    validate_config,
)
from deeprs.errors import ConfigError

PRESETS = sorted((Path(__file__).resolve().parents[1] / "config").glob("*.yaml"))
MINIMAL = {"data": {"source": "phantom", "dir": "results/data/phantom", "labels": {"lv": 500}}}


def _minimal(**overrides) -> dict:
    config = yaml.safe_load(yaml.safe_dump(MINIMAL))
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_presets_are_valid(preset: Path, monkeypatch) -> None:
    monkeypatch.chdir(preset.parents[1])
    data = yaml.safe_load(preset.read_text())["data"]
    if data["source"] == "folder" and not Path(data["dir"]).is_dir():
        pytest.skip(f"{preset.name}: data folder {data['dir']} is not on this machine")
    load_config(preset)


def test_defaults_are_filled() -> None:
    config = validate_config(_minimal())
    assert config["train"]["weights"] == {
        "adv": 1,
        "drc": 10,
        "cc": 1,
        "smooth": 1,
        "fold": 0,
        "acm": 1,
        "ce": 1,
        "label": 1,
        "anatomy": 1,
        "weak": 1,
        "supervised": 1,
    }
    assert config["preprocess"]["target_shape"] == [128, 128, 96]
    assert config["folds"]["n_folds"] == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"train.iterations": "abc"},
            "config key 'train.iterations': 'abc' is not of type 'integer'",
        ),
        ({"train.bogus": 1}, "config key 'train.bogus' is not known"),
        ({"bogus": 1}, "config key 'bogus' is not known"),
        ({"data.source": "web"}, "config key 'data.source': 'web' is not one of"),
        ({"preprocess.target_shape": [64, 64]}, "config key 'preprocess.target_shape'"),
        (
            {"train.weights.drc": -1},
            "config key 'train.weights.drc': -1 is less than the minimum of 0",
        ),
    ],
)
def test_schema_errors_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(_minimal(**overrides))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_required_key() -> None:
    config = _minimal()
    del config["data"]["labels"]
    with pytest.raises(ConfigError, match=r"config key 'data\.labels' is required but missing"):
        validate_config(config)


def test_missing_data_folder(tmp_path: Path) -> None:
    config = _minimal(**{"data.source": "folder", "data.dir": str(tmp_path / "nowhere")})
    with pytest.raises(
        ConfigError, match=r"config key 'data\.dir': data folder '.*nowhere' does not exist"
    ):
        validate_config(config)


def test_empty_data_folder(tmp_path: Path) -> None:
    config = _minimal(**{"data.source": "folder", "data.dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="is empty"):
        validate_config(config)


def test_check_config_cli(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_minimal(**{"train.width": 0})))
    assert deeprs_main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deeprs check-config: error:") and "'train.width'" in err
    assert len(err.splitlines()) == 1
    missing = tmp_path / "missing.yaml"
    assert deeprs_main(["check-config", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_snakemake_stops_with_one_line(tmp_path: Path, repo_root: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_minimal(**{"folds.n_folds": "five"})))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad), "--cores", "1"],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "deeprs: config key 'folds.n_folds': 'five' is not of type 'integer'" in output
    assert "Traceback" not in output


def test_snakemake_plans_reproduce(repo_root: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            # Plan every job, whatever a local run has already built in results/.
            "--forceall",
            "--cores",
            "1",
            "reproduce",
            "--workflow-profile",
            "workflow/profiles/default",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "phantom" in result.stdout and "reproduce" in result.stdout


def test_a_section_reaches_its_command_as_one_checked_object() -> None:
    """The rule's --settings JSON holds the section and the seed, not the per-job keys;
    the command reads back the same values and fills the same defaults."""
    config = validate_config(_minimal(**{"train.iterations": 7, "train.threads": 3}))
    text = section_json(config, "train")
    settings = json.loads(text)
    assert settings["iterations"] == 7 and settings["seed"] == config["seed"]
    assert not set(JOB_KEYS) & set(settings)
    assert read_section(text, "train") == settings
    assert read_section("{}", "train") == section_defaults("train")
    with pytest.raises(ConfigError, match=r"config key 'train.lr': -1 is less than or equal"):
        read_section('{"lr": -1}', "train")
    with pytest.raises(ConfigError, match=r"config key 'folds.n_folds': 1 is less than"):
        read_section('{"n_folds": 1}', "folds")


def test_the_schema_is_found_and_holds_the_only_job_defaults() -> None:
    assert schema_path().is_file()
    assert job_defaults("train") == {"device": "auto", "threads": 2}
