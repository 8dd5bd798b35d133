"""Subject grouping: one documented rule (``data.subject_pattern``) for any Unicode case id,
and no split can put one subject in both training and test."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from deeprs import folds
from deeprs.cli import main
from deeprs.config import load_schema, validate_config
from deeprs.data.cases import CaseRecord, Manifest, Split
from deeprs.data.grouping import DEFAULT_SUBJECT_PATTERN, subject_of
from deeprs.data.ingest import discover_cases
from deeprs.errors import ConfigError, DeeprsError

NFC = unicodedata.normalize("NFC", "pätient001")
NFD = unicodedata.normalize("NFD", "pätient001")  # as macOS file systems spell it
# Two frames of each of six patients, named as users name them.
PATIENTS = ["patient 001", NFC, "patient071", "Пациент 7", "患者 12", "patient_x"]


def frames(patient: str) -> list[str]:
    return [f"{patient}_frame01", f"{patient}_frame12"]


def test_the_default_rule_groups_frames_of_any_unicode_id() -> None:
    assert subject_of("patient 001_frame01") == subject_of("patient 001_frame12") == "patient 001"
    assert subject_of(f"{NFC}_frame12") == subject_of(f"{NFD}_frame01") == NFC
    assert subject_of("patient071_frame01") == "patient071"
    assert subject_of("患者 12_frame07") == "患者 12"
    assert subject_of("ct_train_1001") == "ct_train_1001"  # MM-WHS: one scan per patient
    assert subject_of("_frame01") == "_frame01"  # nothing before the frame: its own subject


def test_a_configured_rule_and_its_mistakes() -> None:
    pattern = r"(?P<subject>.+)_(ED|ES)"
    assert subject_of("sub 3_ED", pattern) == subject_of("sub 3_ES", pattern) == "sub 3"

    def config(pattern: str) -> dict:
        data = {"source": "phantom", "dir": "d", "labels": {"lv": 1}, "subject_pattern": pattern}
        return {"data": data}

    with pytest.raises(ConfigError) as not_regex:
        validate_config(config("(?P<subject>.+"))
    assert str(not_regex.value).startswith(
        "config key 'data.subject_pattern': '(?P<subject>.+' is not a regular expression ("
    )
    with pytest.raises(ConfigError) as no_group:
        validate_config(config(r"(.+)_frame\d+"))
    assert str(no_group.value) == (
        r"config key 'data.subject_pattern': '(.+)_frame\d+' has no group named 'subject'; "
        "mark the part of the case id that names the patient with (?P<subject>...)"
    )


def test_the_schema_default_is_the_documented_rule() -> None:
    schema = load_schema()
    assert schema["properties"]["data"]["properties"]["subject_pattern"]["default"] == (
        DEFAULT_SUBJECT_PATTERN
    )


def test_a_cohort_folder_groups_each_patients_frames(tmp_path: Path) -> None:
    """ACDC layout; only names matter to discovery, so the files are empty."""
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    ids = [case for patient in PATIENTS for case in frames(patient)]
    ids[3] = f"{NFD}_frame12"  # one frame copied from a Mac
    for case in ids:
        (tmp_path / "images" / f"{case}.nii.gz").touch()
        (tmp_path / "labels" / f"{case}_gt.nii.gz").touch()
    cases = discover_cases(tmp_path, "acdc")
    subjects = {case.id: case.subject for case in cases}
    assert sorted(set(subjects.values())) == sorted(PATIENTS)
    assert subjects[f"{NFD}_frame12"] == subjects[f"{NFC}_frame01"] == NFC


def manifest_of(ids: list[str]) -> Manifest:
    cases = {
        case: CaseRecord(case, subject_of(case), True, Path(f"{case}.npy"), Path("l.npy"))
        for case in ids
    }
    return Manifest(Path("manifest.json"), {"lv": 1}, (1.0, 1.0, 1.0), cases)


def test_no_fold_or_label_split_splits_a_patient() -> None:
    manifest = manifest_of([case for patient in PATIENTS for case in frames(patient)])
    splits = folds.make_folds(manifest, 3, seed=4)
    splits += folds.make_label_amount_splits(manifest, [1, 2], 2, seed=4)
    for split in splits:
        folds.check_subjects_apart(split, manifest)
        train = {subject_of(case) for case in split.train_moving + split.train_fixed}
        assert not train & {subject_of(case) for case in split.test}, split.name


def test_a_split_with_a_patient_on_both_sides_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Were the splitting ever wrong, the split step stops before writing any file."""
    ids = [case for patient in PATIENTS for case in frames(patient)]
    manifest = manifest_of(ids)
    leaking = Split("fold_0", 1, [ids[0]], [ids[0]], ids[1:])
    with pytest.raises(DeeprsError) as caught:
        folds.check_subjects_apart(leaking, manifest)
    assert str(caught.value) == (
        "split fold_0 would put subject 'patient 001' in training ('patient 001_frame01') and "
        "in test ('patient 001_frame12'); this is a bug in deeprs.folds, please report it"
    )

    entries = [
        {"id": case, "subject": subject_of(case), "labelled": True, "image": "i.npy"}
        | {"label": "l.npy"}
        for case in ids
    ]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"labels": {"lv": 1}, "spacing_xyz": [1, 1, 1], "cases": entries}))

    def by_case(groups: dict[str, list[str]], n_parts: int, seed: int) -> list[list[str]]:
        cases = sorted(case for group in groups.values() for case in group)
        return [cases[k::n_parts] for k in range(n_parts)]  # frames of a patient land apart

    monkeypatch.setattr(folds, "_partition", by_case)
    out = tmp_path / "splits"
    arguments = ["split", "--manifest", str(path), "--out", str(out)]
    fold_settings = {"n_folds": 2, "label_amounts": [], "seed": 1}
    assert main([*arguments, "--settings", json.dumps(fold_settings)]) == 2
    assert not out.exists()
