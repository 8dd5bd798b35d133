"""Fold and label-amount split invariants (deeprs.folds)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from deeprs.cli import main
from deeprs.data.cases import CaseRecord, Manifest, Split, load_split
from deeprs.errors import ConfigError, DataError, DeeprsError
from deeprs.folds import (
    FoldSettings,
    check_subjects_apart,
    make_folds,
    make_label_amount_splits,
    make_splits,
    split_names,
    validation_cases,
)


def cohort(n_labelled: int, n_unlabelled: int, frames_per_subject: int = 1) -> Manifest:
    """A manifest without arrays: splitting only reads ids, subjects and label flags."""
    cases = {}
    for i in range(n_labelled):
        case_id = f"l{i:02d}"
        subject = f"s{i // frames_per_subject:02d}"
        cases[case_id] = CaseRecord(case_id, subject, True, Path(f"{case_id}.npy"), Path("x.npy"))
    for i in range(n_unlabelled):
        case_id = f"u{i:02d}"
        cases[case_id] = CaseRecord(case_id, case_id, False, Path(f"{case_id}.npy"), None)
    return Manifest(Path("manifest.json"), {"myo": 1}, (1.0, 1.0, 1.0), cases)


def test_mmwhs_folds_follow_the_paper() -> None:
    manifest = cohort(20, 40)
    folds = make_folds(manifest, n_folds=5, seed=2020)
    assert [fold.name for fold in folds] == [f"fold_{k}" for k in range(5)]
    tested: Counter[str] = Counter()
    trained: Counter[str] = Counter()
    for fold in folds:
        assert len(fold.train_moving) == 4 and len(fold.test) == 16
        assert len(fold.train_moving) * len(fold.train_fixed) == 160
        assert len(fold.test) * (len(fold.test) - 1) == 240
        assert fold.train_fixed == manifest.unlabelled_ids
        assert not set(fold.test) & (set(fold.train_moving) | set(fold.train_fixed))
        tested.update(fold.test)
        trained.update(fold.train_moving)
    assert set(tested) == set(trained) == set(manifest.labelled_ids)
    assert set(tested.values()) == {4} and set(trained.values()) == {1}


def test_subjects_are_never_split_and_acdc_trains_on_its_own_images() -> None:
    manifest = cohort(60, 0, frames_per_subject=2)
    for fold in make_folds(manifest, n_folds=5, seed=3):
        train_subjects = {manifest.cases[c].subject for c in fold.train_moving}
        test_subjects = {manifest.cases[c].subject for c in fold.test}
        assert not train_subjects & test_subjects
        assert len(fold.train_moving) == 12 and len(fold.test) == 48
        assert fold.train_fixed == fold.train_moving  # no unlabelled cases, no test images


def test_same_seed_same_folds_other_seed_other_folds() -> None:
    manifest = cohort(20, 4)
    first = make_folds(manifest, 5, seed=1)
    assert make_folds(manifest, 5, seed=1) == first
    assert make_folds(manifest, 5, seed=2) != first
    reordered = Manifest(
        manifest.path,
        manifest.labels,
        manifest.spacing_xyz,
        dict(reversed(list(manifest.cases.items()))),
    )
    assert make_folds(reordered, 5, seed=1) == first


def test_label_amount_splits() -> None:
    manifest = cohort(20, 40)
    splits = make_label_amount_splits(manifest, [1, 4, 7, 10], repeats=3, seed=2020)
    assert len(splits) == 12
    tests = {tuple(split.test) for split in splits}
    assert len(tests) == 1 and len(next(iter(tests))) == 10  # one fixed test set
    by_name = {split.name: split for split in splits}
    for r in range(3):
        previous: set[str] = set()
        for n in (1, 4, 7, 10):
            split = by_name[f"labels_{n}_rep_{r}"]
            assert len(split.train_moving) == n
            assert not set(split.train_moving) & set(split.test)
            assert split.train_fixed == manifest.unlabelled_ids
            assert previous <= set(split.train_moving)  # nested draws
            previous = set(split.train_moving)
    draws = {tuple(by_name[f"labels_4_rep_{r}"].train_moving) for r in range(3)}
    assert len(draws) > 1  # repeats draw different labels
    assert make_label_amount_splits(manifest, [1, 4, 7, 10], 3, 2020) == splits


def test_label_amount_splits_group_subjects_without_unlabelled_cases() -> None:
    manifest = cohort(30, 0, frames_per_subject=2)
    for split in make_label_amount_splits(manifest, [1, 3], repeats=2, seed=5):
        pool_subjects = {manifest.cases[c].subject for c in split.train_fixed}
        test_subjects = {manifest.cases[c].subject for c in split.test}
        assert not pool_subjects & test_subjects
        assert set(split.train_moving) <= set(split.train_fixed)
        assert len(split.train_fixed) == 4  # two whole subjects hold the 3 labels


def test_not_enough_labels_messages() -> None:
    with pytest.raises(
        ConfigError,
        match="5 folds need at least 5 labelled subjects but the "
        "manifest 'manifest.json' has 4 \\(8 labelled cases\\)",
    ):
        make_folds(cohort(8, 0, frames_per_subject=2), 5, seed=0)
    with pytest.raises(
        ConfigError,
        match="up to 10 training labels plus a test set need at "
        "least 12 labelled cases but the manifest 'manifest.json' has 11",
    ):
        make_label_amount_splits(cohort(11, 3), [1, 10], 1, seed=0)


def test_split_command_writes_readable_files(tmp_path: Path) -> None:
    folder = tmp_path / "pre"
    folder.mkdir()
    cases = [
        {
            "id": f"c{i}",
            "subject": f"c{i}",
            "labelled": i < 6,
            "image": f"images/c{i}.npy",
            "label": f"labels/c{i}.npy" if i < 6 else None,
        }
        for i in range(8)
    ]
    manifest = {"labels": {"myo": 1}, "spacing_xyz": [1, 1, 1], "cases": cases}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "splits"
    status = main(
        [
            "split",
            "--manifest",
            str(folder / "manifest.json"),
            "--out",
            str(out),
            "--settings",
            json.dumps(
                {"n_folds": 3, "label_amounts": [1, 2], "label_amount_repeats": 2, "seed": 9}
            ),
        ]
    )
    assert status == 0
    names = sorted(path.name for path in out.iterdir())
    assert names == sorted(
        [f"fold_{k}.json" for k in range(3)]
        + [f"labels_{n}_rep_{r}.json" for n in (1, 2) for r in range(2)]
    )
    # The workflow names its split outputs with the same function.
    settings = FoldSettings(n_folds=3, label_amounts=[1, 2], label_amount_repeats=2, seed=9)
    assert sorted(f"{name}.json" for name in split_names(settings)) == names
    fold = load_split(out / "fold_1.json")
    assert fold.name == "fold_1" and fold.seed == 9
    assert len(fold.train_moving) == 2 and fold.train_fixed == ["c6", "c7"]
    assert (
        main(
            [
                "split",
                "--manifest",
                str(folder / "manifest.json"),
                "--out",
                str(out),
                "--settings",
                json.dumps({"n_folds": 7, "seed": 9}),
            ]
        )
        == 2
    )


def test_validation_subjects_are_set_aside_from_every_split() -> None:
    manifest = cohort(48, 0, frames_per_subject=2)
    settings = FoldSettings(
        n_folds=5, label_amounts=[1, 4], label_amount_repeats=2, seed=7, validation_subjects=2
    )
    splits = make_splits(manifest, settings)
    validation = splits[0].validation
    assert len(validation) == 4  # two whole subjects, both frames
    assert len({manifest.cases[case].subject for case in validation}) == 2
    for split in splits:
        assert split.validation == validation
        used = set(split.train_moving) | set(split.train_fixed) | set(split.test)
        assert not used & set(validation)
        check_subjects_apart(split, manifest)
    folds = [split for split in splits if split.name.startswith("fold_")]
    tested = {case for fold in folds for case in fold.test}
    assert tested == set(manifest.labelled_ids) - set(validation)
    # Another seed sets other subjects aside; none at all leaves the folds as they were.
    other = make_splits(manifest, FoldSettings(**{**vars(settings), "seed": 8}))
    assert other[0].validation != validation
    unset = make_splits(manifest, FoldSettings(**{**vars(settings), "validation_subjects": 0}))
    assert unset[0].validation == [] and unset[0] == make_folds(manifest, 5, seed=7)[0]


def test_too_many_validation_subjects_name_the_key() -> None:
    with pytest.raises(ConfigError, match="config key 'folds.validation_subjects': 6 validation"):
        validation_cases(cohort(6, 2), 6, seed=0)


def test_a_validation_case_in_training_is_refused() -> None:
    manifest = cohort(10, 2)
    fold = make_folds(manifest, 2, seed=0)[0]
    leaked = Split(**{**vars(fold), "validation": [fold.train_moving[0]]})
    with pytest.raises(DeeprsError, match="in training .* and in validation"):
        check_subjects_apart(leaked, manifest)


def test_split_files_with_and_without_validation_read_back(tmp_path: Path) -> None:
    fold = make_splits(
        cohort(12, 2),
        FoldSettings(
            n_folds=2, label_amounts=[], label_amount_repeats=1, seed=3, validation_subjects=2
        ),
    )[0]
    path = tmp_path / "fold_0.json"
    path.write_text(json.dumps(fold.to_json()))
    assert load_split(path) == fold
    older = {key: value for key, value in fold.to_json().items() if key != "validation"}
    path.write_text(json.dumps(older))
    assert load_split(path).validation == []
    path.write_text(json.dumps({**older, "validation": "l00"}))
    with pytest.raises(DataError, match="key 'validation' must be a list of case ids"):
        load_split(path)
