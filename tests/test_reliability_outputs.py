"""Outputs are never wrongly trusted: a full disk during each writing step, a damaged checkpoint.

A disk that fills up during each writing step (phantom, preprocess, train, evaluate,
report): each test runs the step's command on tiny inputs with its output folder on a small tmpfs
(mounted here; the tests skip, saying why, where mounting is not permitted) that fills up
during the step. The command must stop with exit status 2 and one line naming the file and
the cause, leave no file that does not read back whole (no truncated image, checkpoint or
table under its final name, no temporaries), leave its inputs as they were, and succeed
once there is space again, without any manual step. A damaged ``checkpoint.pt`` is set
aside with a warning and training starts over, without any manual step either.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from deeprs.cli import main
from deeprs.io import verifier_for

LABELS = {"myo": 205, "la": 420, "lv": 500, "ra": 550, "rv": 600, "aa": 820, "pa": 850}
PHANTOM = ["--n-labelled", "4", "--n-unlabelled", "1", "--shape", "40", "40", "24"]
PHANTOM += ["--spacing", "6", "6", "9", "--seed", "3"]
TRAIN_SETTINGS = {"iterations": 2, "width": 0.25, "checkpoint_every": 1, "seed": 5}
TRAIN = ["--settings", json.dumps(TRAIN_SETTINGS), "--device", "cpu", "--threads", "1"]


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's syntax: 96k, 2m) at ``folder``, unmounted afterwards."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs to fill up (needs root or CAP_SYS_ADMIN): "
            f"{mounted.stderr.strip() or mounted.returncode}"
        )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def grow(folder: Path, size: str) -> None:
    """Free space, as a user would: here by enlarging the tmpfs."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def fill(folder: Path) -> None:
    """Take every free byte of the file system that holds ``folder``."""
    with open(folder / "filler", "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)


def assert_failed_cleanly(command: str, status: int, output: str, disk: Path) -> Path:
    """Exit 2, one line naming a file on ``disk`` and the cause, and nothing bad left there.

    Returns the named file.
    """
    assert status == 2, output[-2000:]
    assert "Traceback" not in output and "NWAD" not in output, output[-2000:]
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, output[-2000:]
    found = re.search(
        rf"deeprs {command}: error: no space left on device while writing '([^']+)'; "
        r"free space and rerun$",
        errors[0],
    )
    assert found, errors[0]
    named = Path(found.group(1))
    assert named.is_relative_to(disk) and not named.exists()
    for path in disk.rglob("*"):
        assert not path.name.startswith("."), f"temporary left behind: {path}"
        if path.is_file() and path.name != "filler":
            verifier_for(path)(path)  # raises if the file does not read back whole
    return named


def captured(capfd: pytest.CaptureFixture[str]) -> str:
    out, err = capfd.readouterr()
    return (out + err).replace("\r", "\n")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny cohort, its preprocessed copy, two folds and Affine's metrics, on the real disk."""
    base = tmp_path_factory.mktemp("study")
    cohort = base / "cohort"
    assert main(["phantom", "--out", str(cohort), *PHANTOM]) == 0
    config = base / "config.yaml"
    settings = {
        "data": {"source": "folder", "dir": str(cohort), "labels": LABELS},
        "preprocess": {"target_shape": [32, 32, 16]},
    }
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    preprocessed = base / "preprocessed"
    assert main(["preprocess", "--config", str(config), "--out", str(preprocessed)]) == 0
    manifest = preprocessed / "manifest.json"
    splits = base / "splits"
    arguments = ["split", "--manifest", str(manifest), "--out", str(splits)]
    folds = {"n_folds": 2, "label_amounts": [], "seed": 11}
    assert main([*arguments, "--settings", json.dumps(folds)]) == 0
    results = base / "results"
    for fold in ("fold_0", "fold_1"):
        arguments = ["evaluate", "--method", "affine", "--split", str(splits / f"{fold}.json")]
        arguments += ["--manifest", str(manifest), "--device", "cpu"]
        arguments += ["--out", str(results / "affine" / fold / "metrics.csv")]
        assert main(arguments) == 0
    return {
        "base": base,
        "cohort": cohort,
        "config": config,
        "manifest": manifest,
        "splits": splits,
        "results": results,
    }


def test_phantom_on_a_full_disk_fails_in_one_line_and_heals(
    study: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """SimpleITK's writer returns normally on a full disk; the image is read back instead.

    The first cases fit, a later image is cut short mid-write."""
    capfd.readouterr()
    with small_disk(tmp_path / "disk", "120k") as disk:
        out = disk / "phantom"
        status = main(["phantom", "--out", str(out), *PHANTOM])
        named = assert_failed_cleanly("phantom", status, captured(capfd), disk)
        assert named.name.endswith(".nii.gz")
        grow(disk, "4m")
        assert main(["phantom", "--out", str(out), *PHANTOM]) == 0
        assert checksums(out) == checksums(study["cohort"])


def test_preprocess_on_a_full_disk_fails_in_one_line_and_heals(
    study: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    before = checksums(study["cohort"])
    capfd.readouterr()
    with small_disk(tmp_path / "disk", "64k") as disk:
        out = disk / "preprocessed"
        arguments = ["preprocess", "--config", str(study["config"]), "--out", str(out)]
        assert_failed_cleanly("preprocess", main(arguments), captured(capfd), disk)
        assert not (out / "manifest.json").exists()
        assert checksums(study["cohort"]) == before
        grow(disk, "8m")
        assert main(arguments) == 0
        assert (out / "manifest.json").exists()


def test_training_on_a_full_disk_fails_in_one_line_and_heals(
    study: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """torch's zip writer raises a bare RuntimeError on a full disk; the user sees one line."""
    capfd.readouterr()
    with small_disk(tmp_path / "disk", "64k") as disk:
        out = disk / "unet3d" / "fold_0"
        arguments = ["train", "--method", "unet3d", "--manifest", str(study["manifest"])]
        arguments += ["--split", str(study["splits"] / "fold_0.json"), "--out-dir", str(out)]
        named = assert_failed_cleanly("train", main([*arguments, *TRAIN]), captured(capfd), disk)
        assert named.suffix == ".pt"
        assert not (out / "model.pt").exists()
        grow(disk, "16m")
        assert main([*arguments, *TRAIN]) == 0
        assert torch.load(out / "model.pt", weights_only=True)["iteration"] == 2


def test_evaluation_on_a_full_disk_fails_in_one_line_and_heals(
    study: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    with small_disk(tmp_path / "disk", "64k") as disk:
        out = disk / "affine" / "fold_0" / "metrics.csv"
        out.parent.mkdir(parents=True)
        fill(disk)
        arguments = ["evaluate", "--method", "affine", "--manifest", str(study["manifest"])]
        arguments += ["--split", str(study["splits"] / "fold_0.json"), "--device", "cpu"]
        arguments += ["--out", str(out)]
        named = assert_failed_cleanly("evaluate", main(arguments), captured(capfd), disk)
        assert named == out
        (disk / "filler").unlink()
        assert main(arguments) == 0
        expected = study["results"] / "affine" / "fold_0" / "metrics.csv"
        assert out.read_bytes() == expected.read_bytes()


def test_report_on_a_full_disk_fails_in_one_line_and_heals(
    study: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Tables fit, a figure does not."""
    results = Path(shutil.copytree(study["results"], tmp_path / "results"))
    before = checksums(results)
    capfd.readouterr()
    with small_disk(tmp_path / "disk", "24k") as disk:
        out = disk / "report"
        arguments = ["report", "--results", str(results), "--out", str(out)]
        arguments += ["--methods", "affine", "--folds", "0", "1", "--structures", *LABELS]
        assert_failed_cleanly("report", main(arguments), captured(capfd), disk)
        assert checksums(results) == before
        grow(disk, "8m")
        assert main(arguments) == 0
        assert (out / "table1.csv").exists()


def test_a_damaged_checkpoint_is_set_aside_and_training_starts_over(
    study: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint cut in half (a disk fault, a partial copy) no longer blocks every rerun;
    the run that follows ends with exactly the weights of an undisturbed run (CPU)."""
    arguments = ["train", "--method", "unet3d", "--manifest", str(study["manifest"])]
    arguments += ["--split", str(study["splits"] / "fold_0.json"), *TRAIN]
    assert main([*arguments, "--out-dir", str(tmp_path / "undisturbed")]) == 0
    model = (tmp_path / "undisturbed" / "model.pt").read_bytes()
    healed = tmp_path / "healed"
    healed.mkdir()
    damaged = model[: len(model) // 2]
    (healed / "checkpoint.pt").write_bytes(damaged)

    with caplog.at_level(logging.WARNING):
        assert main([*arguments, "--out-dir", str(healed)]) == 0
    kept = [path for path in healed.iterdir() if path.name.startswith("checkpoint.pt.corrupt-")]
    assert len(kept) == 1 and kept[0].read_bytes() == damaged
    assert (
        f"checkpoint '{healed / 'checkpoint.pt'}' cannot be read (RuntimeError); kept it as "
        f"'{kept[0].name}' and training starts from scratch"
    ) in caplog.text
    assert (healed / "model.pt").read_bytes() == model
    assert not (healed / "checkpoint.pt").exists()
