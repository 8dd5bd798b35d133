"""Reading the preprocessed manifest and the split files (deeprs.data.cases)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deeprs.data.cases import Split, load_manifest, load_split
from deeprs.errors import DataError


def write_manifest(folder: Path) -> Path:
    """Two labelled cases of one subject and one unlabelled case, with arrays on disk."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rng = np.random.default_rng(0)
    cases = []
    for case_id, labelled in (("a_ed", True), ("a_es", True), ("u", False)):
        np.save(folder / f"images/{case_id}.npy", rng.random((4, 5, 6), dtype=np.float32))
        entry = {
            "id": case_id,
            "subject": "a" if labelled else case_id,
            "labelled": labelled,
            "image": f"images/{case_id}.npy",
            "label": None,
        }
        if labelled:
            np.save(folder / f"labels/{case_id}.npy", rng.integers(0, 3, (4, 5, 6), dtype=np.uint8))
            entry["label"] = f"labels/{case_id}.npy"
        cases.append(entry)
    manifest = {
        "labels": {"myo": 1, "lv": 2},
        "target_shape_xyz": [6, 5, 4],
        "spacing_xyz": [1.5, 2.0, 3.0],
        "reference": "a_ed",
        "cases": cases,
    }
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def write_split(path: Path, **overrides: object) -> Path:
    split = {
        "name": "fold_0",
        "seed": 1,
        "train_moving": ["a_ed"],
        "train_fixed": ["u"],
        "test": ["a_es"],
    }
    split.update(overrides)
    path.write_text(json.dumps(split))
    return path


def test_manifest_reads_cases_and_arrays(tmp_path: Path) -> None:
    manifest = load_manifest(write_manifest(tmp_path))
    assert manifest.labels == {"myo": 1, "lv": 2}
    assert manifest.spacing_xyz == (1.5, 2.0, 3.0)
    assert manifest.spacing_zyx == (3.0, 2.0, 1.5)
    assert manifest.labelled_ids == ["a_ed", "a_es"]
    assert manifest.unlabelled_ids == ["u"]
    assert manifest.cases["a_es"].subject == "a"
    image = manifest.image("a_ed")
    assert image.dtype == np.float32 and image.shape == (4, 5, 6)
    np.testing.assert_array_equal(image, np.load(tmp_path / "images/a_ed.npy"))
    assert manifest.image("a_ed") is image  # cached, not reloaded
    label = manifest.label("a_es")
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, np.load(tmp_path / "labels/a_es.npy"))


def test_label_of_unlabelled_case_is_refused(tmp_path: Path) -> None:
    manifest = load_manifest(write_manifest(tmp_path))
    with pytest.raises(
        DataError, match="case 'u' has no label but is used where a label is needed"
    ):
        manifest.label("u")


def test_unknown_case_and_missing_array(tmp_path: Path) -> None:
    manifest = load_manifest(write_manifest(tmp_path))
    with pytest.raises(DataError, match="case 'nope' is not in the manifest"):
        manifest.image("nope")
    (tmp_path / "images/a_es.npy").unlink()
    with pytest.raises(DataError, match=r"a_es\.npy: the image of case 'a_es' is missing"):
        manifest.image("a_es")


def test_wrong_dtype_array_is_refused(tmp_path: Path) -> None:
    manifest = load_manifest(write_manifest(tmp_path))
    np.save(tmp_path / "labels/a_ed.npy", np.zeros((4, 5, 6), dtype=np.int64))
    with pytest.raises(DataError, match="is int64 with 3 axes but must be a 3-axis uint8 array"):
        manifest.label("a_ed")


def test_malformed_manifest_messages(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest '.*missing.json' does not exist"):
        load_manifest(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DataError, match="is not valid JSON"):
        load_manifest(broken)
    path = write_manifest(tmp_path / "m")
    data = json.loads(path.read_text())
    del data["spacing_xyz"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="key 'spacing_xyz' is missing or not a list"):
        load_manifest(path)


def test_split_round_trip_and_checks(tmp_path: Path) -> None:
    manifest = load_manifest(write_manifest(tmp_path))
    split = load_split(write_split(tmp_path / "fold_0.json"), manifest)
    assert split == Split("fold_0", 1, ["a_ed"], ["u"], ["a_es"])
    assert Split(**split.to_json()) == split

    unknown = write_split(tmp_path / "unknown.json", test=["a_es", "ghost"])
    with pytest.raises(DataError, match="test case 'ghost' is not in the manifest"):
        load_split(unknown, manifest)
    unlabelled = write_split(tmp_path / "unlabelled.json", train_moving=["u"])
    with pytest.raises(DataError, match="train_moving case 'u' has no label"):
        load_split(unlabelled, manifest)
    malformed = write_split(tmp_path / "malformed.json", test="a_es")
    with pytest.raises(DataError, match="key 'test' is missing or not a list"):
        load_split(malformed)
