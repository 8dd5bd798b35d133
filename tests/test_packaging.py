"""The package outside the checkout: a wheel carries the config schema, so `deeprs
check-config` works from any folder; MONAI (a test-only reference) is never imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO, copy_checkout

BAD_CONFIG = "data: {source: phantom, dir: x, labels: {lv: 500}}\ntrain: {iterations: abc}\n"


def test_a_wheel_ships_the_schema_and_checks_configs_from_any_folder(tmp_path: Path) -> None:
    source = copy_checkout(tmp_path / "checkout")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path / "wheel"),
            ".",
        ],
        cwd=source,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("deeprs-*.whl")
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(installed)
    assert "deeprs/resources/config.schema.yaml" in names
    assert any(name.endswith("/licenses/LICENSE") for name in names)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "bad.yaml").write_text(BAD_CONFIG)
    # The unpacked wheel first on the path, run from a folder without workflow/ around it.
    environment = {**os.environ, "PYTHONPATH": str(installed)}

    def check(config: Path) -> subprocess.CompletedProcess[str]:
        code = "import sys, deeprs.cli; print(deeprs.cli.__file__); sys.exit(deeprs.cli.main())"
        command = [sys.executable, "-c", code, "check-config", str(config)]
        return subprocess.run(
            command, cwd=elsewhere, env=environment, capture_output=True, text=True
        )

    good = check(REPO / "config" / "smoke.yaml")
    assert good.returncode == 0, good.stderr[-2000:]
    assert good.stdout.splitlines()[0].startswith(str(installed))
    assert good.stdout.splitlines()[1].endswith("smoke.yaml: valid")
    bad = check(elsewhere / "bad.yaml")
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith(
        "config key 'train.iterations': 'abc' is not of type 'integer'"
    )


def _imported_after(packages: list[str], prefix: str) -> list[str]:
    """Modules starting with ``prefix`` loaded once every module of ``packages`` is imported
    (in a fresh interpreter)."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"for name in {packages!r}:\n"
        "    package = importlib.import_module(name)\n"
        "    for module in pkgutil.walk_packages(package.__path__, name + '.'):\n"
        "        if not module.name.endswith('__main__'):\n"
        "            importlib.import_module(module.name)\n"
        f"found = [n for n in sys.modules if n == {prefix!r} or n.startswith({prefix + '.'!r})]\n"
        "print(json.dumps(sorted(found)))\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    found = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr[-2000:]
    return json.loads(found.stdout)


def test_no_module_of_the_package_imports_monai() -> None:
    assert _imported_after(["deeprs"], "monai") == []


def test_evaluation_inference_and_report_import_no_training_code() -> None:
    """Applying and scoring a trained model needs no trainer: evaluation, inference and the
    report import nothing of ``deeprs.train``."""
    assert (
        _imported_after(["deeprs.evaluate", "deeprs.inference", "deeprs.report"], "deeprs.train")
        == []
    )
