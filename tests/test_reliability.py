"""Bad inputs as a user meets them: a broken file in the data folder, a wrong config.

Each test copies a tiny synthetic cohort (``deeprs phantom``) into its own folder, breaks
one thing the way it happens in practice, runs the command a user (or a Snakemake rule)
runs, and checks three things: the exit status 2, the one-sentence message naming the file
or config key, and that nothing was lost (the data folder is byte-for-byte unchanged and
no manifest claims a finished step).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from deeprs.cli import main

LABELS = {"myo": 205, "la": 420, "lv": 500, "ra": 550, "rv": 600, "aa": 820, "pa": 850}
LABEL_TABLE = "myo: 205, la: 420, lv: 500, ra: 550, rv: 600, aa: 820, pa: 850"
# The first labelled case: the preprocessing reads it before any other labelled case.
FIRST = "ct_train_1001"
# A structure erased from one label in the preprocessed cohort.
ABSENT_CASE, ABSENT_STRUCTURE = "ct_train_1004", "pa"


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def write_config(path: Path, data_dir: Path, **sections: object) -> Path:
    config = {"data": {"source": "folder", "dir": str(data_dir), "labels": LABELS}}
    config.update(sections)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 labelled + 1 unlabelled chest CTs of 40 x 40 x 24 voxels (MM-WHS layout)."""
    folder = tmp_path_factory.mktemp("pristine") / "cohort"
    arguments = ["phantom", "--out", str(folder), "--n-labelled", "4", "--n-unlabelled", "1"]
    arguments += ["--shape", "40", "40", "24", "--spacing", "6", "6", "9", "--seed", "3"]
    assert main(arguments) == 0
    (folder / "mosaic.png").unlink()
    return folder


@pytest.fixture
def cohort(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the pristine cohort that a test may break."""
    return Path(shutil.copytree(pristine, tmp_path / "cohort"))


def image_path(cohort: Path, case: str = FIRST, kind: str = "image") -> Path:
    return cohort / "ct_train" / f"{case}_{kind}.nii.gz"


def rewrite(path: Path, change) -> None:
    """Read a volume, let ``change(image) -> image`` alter it, and write it back."""
    image = sitk.ReadImage(str(path))
    sitk.WriteImage(change(image), str(path))


def preprocess_fails(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], **sections: object
) -> str:
    """Run ``deeprs preprocess`` on the broken cohort; return its one error line.

    Asserts what a failure must never do: change an input or leave a manifest behind.
    """
    before = checksums(cohort)
    config = write_config(tmp_path / "config.yaml", cohort, **sections)
    out = tmp_path / "preprocessed"
    assert main(["preprocess", "--config", str(config), "--out", str(out)]) == 2
    assert checksums(cohort) == before
    assert not (out / "manifest.json").exists()
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    prefix = "deeprs preprocess: error: "
    assert error.startswith(prefix)
    return error[len(prefix) :]


def test_truncated_image_file(cohort: Path, tmp_path: Path, capsys) -> None:
    path = image_path(cohort)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = preprocess_fails(cohort, tmp_path, capsys)
    assert message.startswith(f"'{path}' cannot be read as an image (")
    assert message.endswith(
        "); replace the file (it may be truncated or not a NIfTI/MHA/NRRD file)"
    )


def test_file_that_is_not_an_image(cohort: Path, tmp_path: Path, capsys) -> None:
    path = image_path(cohort, kind="label")
    path.write_text("not an image\n")
    message = preprocess_fails(cohort, tmp_path, capsys)
    assert message.startswith(f"'{path}' cannot be read as an image (")


def test_two_dimensional_image(cohort: Path, tmp_path: Path, capsys) -> None:
    path = image_path(cohort)
    rewrite(path, lambda image: image[:, :, 5])
    assert preprocess_fails(cohort, tmp_path, capsys) == (
        f"'{path}' is a 2D image with 1 component(s) per voxel; give one 3D scalar volume per file"
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda label: label[:, :, 1:], "size (40, 40, 23) differs from the image's (40, 40, 24)"),
        (
            lambda label: _with(label, spacing=(6.0, 6.0, 8.0)),
            "spacing (6.0, 6.0, 8.0) differs from the image's (6.0, 6.0, 9.0)",
        ),
        (
            lambda label: _with(label, direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)),
            "orientation (direction cosines) differs from the image's",
        ),
    ],
    ids=["shape", "spacing", "orientation"],
)
def test_label_on_another_grid(cohort: Path, tmp_path: Path, capsys, change, problem) -> None:
    image, label = image_path(cohort), image_path(cohort, kind="label")
    rewrite(label, change)
    assert preprocess_fails(cohort, tmp_path, capsys) == (
        f"label '{label}' does not match image '{image}': {problem}; resample the label "
        "onto the image grid"
    )


def _with(image: sitk.Image, spacing=None, direction=None) -> sitk.Image:
    if spacing is not None:
        image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    return image


def test_label_value_not_in_the_label_table(cohort: Path, tmp_path: Path, capsys) -> None:
    label = image_path(cohort, kind="label")

    def add_999(image: sitk.Image) -> sitk.Image:
        values = sitk.GetArrayFromImage(image)
        values[0, :2, :2] = 999
        changed = sitk.GetImageFromArray(values)
        changed.CopyInformation(image)
        return changed

    rewrite(label, add_999)
    assert preprocess_fails(cohort, tmp_path, capsys) == (
        f"label '{label}' has value(s) [999] that are not in data.labels ({LABEL_TABLE}); "
        "add them to the config's label table"
    )


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_intensities(cohort: Path, tmp_path: Path, capsys, bad_value: float) -> None:
    path = image_path(cohort)
    nifti = nibabel.load(str(path))
    voxels = np.asarray(nifti.dataobj, dtype=np.float32)
    voxels[3, 4, 5] = voxels[6, 7, 8] = bad_value
    # The phantom stores int16 HU; a float32 file is what carries a NaN or Inf.
    nibabel.save(nibabel.Nifti1Image(voxels, nifti.affine), str(path))
    assert preprocess_fails(cohort, tmp_path, capsys) == (
        f"'{path}' has 2 NaN or infinite voxel(s); fix or replace the file"
    )


def test_case_that_is_both_labelled_and_unlabelled(cohort: Path, tmp_path: Path, capsys) -> None:
    shutil.copy(image_path(cohort, "ct_train_1002"), cohort / "ct_test")
    assert preprocess_fails(cohort, tmp_path, capsys) == (
        f"data folder '{cohort}': case id 'ct_train_1002' is both labelled and unlabelled; "
        "give each case one id"
    )


def test_one_case_in_two_files(cohort: Path, tmp_path: Path, capsys) -> None:
    original = image_path(cohort, "ct_train_1002")
    copy = original.with_name("ct_train_1002_image.mha")
    sitk.WriteImage(sitk.ReadImage(str(original)), str(copy))
    assert preprocess_fails(cohort, tmp_path, capsys) == (
        f"case id 'ct_train_1002' appears twice ('{copy}' and '{original}'); keep one file per case"
    )


def test_folder_without_cases(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "scans"
    (folder / "ct_train").mkdir(parents=True)
    (folder / "ct_train" / "notes.txt").write_text("scans arrive on Monday\n")
    assert preprocess_fails(folder, tmp_path, capsys) == (
        f"data folder '{folder}' holds no mmwhs cases; expected ct_train/*_image.nii.gz and "
        "ct_test/*_image.nii.gz"
    )


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        ("missing", "does not exist; point it at the folder that holds your images"),
        ("empty", "is empty; put your cohort there or point data.dir at the folder that holds it"),
    ],
)
def test_missing_or_empty_data_folder(tmp_path: Path, capsys, state: str, problem: str) -> None:
    folder = tmp_path / "scans"
    if state == "empty":
        folder.mkdir()
    assert preprocess_fails(folder, tmp_path, capsys) == (
        f"{tmp_path / 'config.yaml'}: config key 'data.dir': data folder '{folder}' {problem}"
    )


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"preprocess": {"target_shape": [32, 32]}},
            "config key 'preprocess.target_shape': [32, 32] is too short",
        ),
        (
            {"preprocess": {"target_shap": [32, 32, 16]}},
            "config key 'preprocess.target_shap' is not known (allowed here: crop_margin_mm, "
            "ct_window, mri_percentiles, reference, target_shape)",
        ),
        (
            {"train": {"iterations": "many"}},
            "config key 'train.iterations': 'many' is not of type 'integer'",
        ),
    ],
    ids=["short-shape", "misspelt-key", "wrong-type"],
)
def test_config_against_the_schema(
    cohort: Path, tmp_path: Path, capsys, sections: dict, message: str
) -> None:
    assert preprocess_fails(cohort, tmp_path, capsys, **sections) == (
        f"{tmp_path / 'config.yaml'}: {message}"
    )


def test_reference_that_is_not_in_the_cohort(cohort: Path, tmp_path: Path, capsys) -> None:
    assert preprocess_fails(cohort, tmp_path, capsys, preprocess={"reference": "ct_9999"}) == (
        "config key 'preprocess.reference': case 'ct_9999' is not in the cohort; use 'auto' "
        "or one of the case ids"
    )


def test_bad_file_anywhere_stops_before_the_first_registration(
    cohort: Path, tmp_path: Path, capsys
) -> None:
    """The last labelled case's label is broken: found before any elastix run."""
    label = image_path(cohort, "ct_train_1004", "label")
    label.write_bytes(label.read_bytes()[:100])
    before = checksums(cohort)
    config = write_config(tmp_path / "config.yaml", cohort)
    elastix_log = tmp_path / "elastix.log"
    arguments = ["preprocess", "--config", str(config), "--out", str(tmp_path / "out")]
    assert main([*arguments, "--elastix-log", str(elastix_log)]) == 2
    assert f"'{label}' cannot be read as an image (" in capsys.readouterr().err
    assert not elastix_log.exists() or "=====" not in elastix_log.read_text()
    assert not (tmp_path / "out").exists()
    assert checksums(cohort) == before


# --- a cohort that preprocesses, with one structure missing from one label -------------


@pytest.fixture(scope="module")
def preprocessed(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[str]]:
    """The pristine cohort with 'pa' erased from one label, preprocessed to 32 x 32 x 16.

    Returns the manifest and the warnings the preprocessing logged.
    """
    folder = tmp_path_factory.mktemp("absent")
    cohort = Path(shutil.copytree(pristine, folder / "cohort"))

    def erase(image: sitk.Image) -> sitk.Image:
        values = sitk.GetArrayFromImage(image)
        values[values == LABELS[ABSENT_STRUCTURE]] = 0
        changed = sitk.GetImageFromArray(values)
        changed.CopyInformation(image)
        return changed

    rewrite(image_path(cohort, ABSENT_CASE, "label"), erase)
    config = write_config(folder / "config.yaml", cohort, preprocess={"target_shape": [32, 32, 16]})
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        out = folder / "preprocessed"
        assert main(["preprocess", "--config", str(config), "--out", str(out)]) == 0
    finally:
        logging.getLogger().removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    return out / "manifest.json", warnings


def test_absent_structure_is_a_warning_and_scores_nan(
    preprocessed: tuple[Path, list[str]], tmp_path: Path
) -> None:
    manifest, warnings = preprocessed
    label_file = next(w for w in warnings if ABSENT_CASE in w)
    assert label_file.endswith("_label.nii.gz': structure 'pa' (value 850) is absent")
    assert (
        main(
            ["split", "--manifest", str(manifest), "--out", str(tmp_path), "--settings"]
            + [
                json.dumps(
                    {"n_folds": 2, "label_amounts": [1], "label_amount_repeats": 1, "seed": 1}
                )
            ]
        )
        == 0
    )
    fold = next(
        tmp_path / f"fold_{k}.json"
        for k in range(2)
        if ABSENT_CASE in json.loads((tmp_path / f"fold_{k}.json").read_text())["test"]
    )
    metrics_file = tmp_path / "metrics.csv"
    arguments = ["evaluate", "--method", "affine", "--split", str(fold), "--manifest"]
    arguments += [str(manifest), "--out", str(metrics_file), "--device", "cpu"]
    assert main(arguments) == 0
    metrics = pd.read_csv(metrics_file)
    rows = metrics[(metrics.structure == "pa") & metrics["sample"].str.contains(ABSENT_CASE)]
    assert len(rows) > 0
    assert rows.hd95_mm.isna().all()
    assert (rows.dice == 0).all()
    others = metrics[~metrics["sample"].str.contains(ABSENT_CASE)]
    assert others.dice.notna().all() and others.hd95_mm.notna().all()


def test_fewer_labelled_cases_than_the_folds_need(
    preprocessed: tuple[Path, list[str]], tmp_path: Path, capsys
) -> None:
    manifest, _ = preprocessed
    arguments = ["split", "--manifest", str(manifest), "--out", str(tmp_path / "splits")]
    assert main([*arguments, "--settings", '{"n_folds": 5, "seed": 1}']) == 2
    assert capsys.readouterr().err.strip() == (
        "deeprs split: error: config key 'folds.n_folds': 5 folds need at least 5 labelled "
        f"subjects but the manifest '{manifest}' has 4 (4 labelled cases); lower "
        "folds.n_folds or add labelled cases"
    )
    assert main([*arguments, "--settings", '{"n_folds": 2, "label_amounts": [3], "seed": 1}']) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(
        "deeprs split: error: config key 'folds.label_amounts': up to 3 training labels plus "
        "a test set need at least"
    )
    assert message.endswith(f"but the manifest '{manifest}' has 4; lower the largest label amount")
    assert not (tmp_path / "splits").exists() or not any((tmp_path / "splits").iterdir())


def test_console_script_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    """The installed `deeprs` command, not just main(): no traceback reaches the user."""
    script = Path(sys.executable).with_name("deeprs")
    config = write_config(tmp_path / "config.yaml", tmp_path / "nowhere")
    finished = subprocess.run(
        [str(script), "preprocess", "--config", str(config), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert finished.returncode == 2
    assert "Traceback" not in finished.stderr
    assert finished.stderr.strip().splitlines()[-1] == (
        f"deeprs preprocess: error: {config}: config key 'data.dir': data folder "
        f"'{tmp_path / 'nowhere'}' does not exist; point it at the folder that holds your images"
    )
