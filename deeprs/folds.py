"""The cross-validation folds and the label-amount splits (``deeprs split``, :mod:`deeprs.commands.split`).

Folds follow the paper: the labelled cases are split into ``n_folds`` seeded parts; fold k
trains with part k as moving images (few-shot: 4 of the 20 MM-WHS labels) and all
unlabelled cases as fixed images, and tests on the other parts. Label-amount splits use
one fixed test set and nested seeded draws of ``n`` training labels from the rest. Cases
are always grouped by ``subject`` (the rule is in :mod:`deeprs.data.grouping`) so that the
two frames of one ACDC patient never sit on both sides of a split, and every split is
checked for that before any is written. ``validation_subjects`` labelled subjects are drawn
first and set aside: every split names them as its ``validation`` cases (the validation
signal of training) and none of them is ever a training or test case. The protocol,
including cohorts without unlabelled cases, is in ``docs/methods.md`` (section "Folds").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeprs.data.cases import Manifest, Split
from deeprs.errors import ConfigError, DeeprsError
from deeprs.io import write_json

# Registration is evaluated on ordered pairs of test cases, so a test set needs two.
MIN_TEST_CASES = 2


def _subject_groups(manifest: Manifest, validation: Sequence[str] = ()) -> dict[str, list[str]]:
    """Labelled case ids per subject, both sorted so the manifest's order does not matter;
    the ``validation`` cases are left out."""
    groups: dict[str, list[str]] = defaultdict(list)
    for case_id in sorted(set(manifest.labelled_ids) - set(validation)):
        groups[manifest.cases[case_id].subject].append(case_id)
    return dict(sorted(groups.items()))


def validation_cases(manifest: Manifest, n_subjects: int, seed: int) -> list[str]:
    """The labelled cases of ``n_subjects`` seeded subjects, set aside for validation.

    Drawn from a generator of their own (not the folds'); the folds are then made from the
    remaining subjects, so setting cases aside reshuffles every fold.
    """
    if n_subjects == 0:
        return []
    groups = _subject_groups(manifest)
    if n_subjects >= len(groups):
        raise ConfigError(
            f"config key 'folds.validation_subjects': {n_subjects} validation subjects leave "
            f"none of the {len(groups)} labelled subjects of '{manifest.path}' for the folds; "
            "lower it"
        )
    chosen = _shuffled_subjects(groups, np.random.default_rng([seed, 3]))[:n_subjects]
    return sorted(case for subject in chosen for case in groups[subject])


def _shuffled_subjects(groups: dict[str, list[str]], rng: np.random.Generator) -> list[str]:
    subjects = list(groups)
    return [subjects[i] for i in rng.permutation(len(subjects))]


def _partition(groups: dict[str, list[str]], n_parts: int, seed: int) -> list[list[str]]:
    """Seeded parts of near-equal case counts, each subject whole in one part.

    Subjects are shuffled, then placed largest first into the part with fewest cases, which
    gives 4 cases per part for 20 single-frame subjects and balanced parts for ACDC pairs.
    """
    order = _shuffled_subjects(groups, np.random.default_rng(seed))
    order.sort(key=lambda subject: -len(groups[subject]))  # stable: ties keep the shuffle
    parts: list[list[str]] = [[] for _ in range(n_parts)]
    for subject in order:
        lightest = min(range(n_parts), key=lambda k: len(parts[k]))
        parts[lightest].extend(groups[subject])
    return [sorted(part) for part in parts]


def _fixed_images(manifest: Manifest, training_side: list[str]) -> list[str]:
    """All unlabelled cases; without any (ACDC), the training side's own images.

    Test images are never used as fixed training images: that would be transductive.
    """
    unlabelled = sorted(manifest.unlabelled_ids)
    return unlabelled if unlabelled else sorted(training_side)


def make_folds(
    manifest: Manifest, n_folds: int, seed: int, validation: Sequence[str] = ()
) -> list[Split]:
    """One split per fold: part k trains (moving), the other parts test."""
    groups = _subject_groups(manifest, validation)
    n_cases = sum(len(cases) for cases in groups.values())
    if len(groups) < n_folds:
        raise ConfigError(
            f"config key 'folds.n_folds': {n_folds} folds need at least {n_folds} labelled "
            f"subjects but the manifest '{manifest.path}' has {len(groups)} ({n_cases} "
            "labelled cases); lower folds.n_folds or add labelled cases"
        )
    parts = _partition(groups, n_folds, seed)
    splits = []
    for k, part in enumerate(parts):
        test = sorted(case for other, cases in enumerate(parts) if other != k for case in cases)
        if len(test) < MIN_TEST_CASES:
            raise ConfigError(
                f"config key 'folds.n_folds': fold {k} would have {len(test)} test case(s) but "
                f"registration needs at least {MIN_TEST_CASES}; the manifest '{manifest.path}' "
                f"has only {n_cases} labelled cases, so lower folds.n_folds or add labels"
            )
        splits.append(
            Split(
                name=f"fold_{k}",
                seed=seed,
                train_moving=part,
                train_fixed=_fixed_images(manifest, part),
                test=test,
                validation=list(validation),
            )
        )
    return splits


def make_label_amount_splits(
    manifest: Manifest,
    amounts: Sequence[int],
    repeats: int,
    seed: int,
    validation: Sequence[str] = (),
) -> list[Split]:
    """Splits ``labels_{n}_rep_{r}``: one fixed test set, nested seeded draws of n labels.

    A seeded shuffle of the subjects puts the first ones into a training pool of at least
    ``max(amounts)`` cases and the rest into the test set, the same for every n and r so
    that all points of the study are measured on the same images. Repeat r permutes the pool
    once and trains on its first n cases, so the 1 label of repeat r is among its 4, and so on.
    """
    groups = _subject_groups(manifest, validation)
    n_cases = sum(len(cases) for cases in groups.values())
    largest = max(amounts)
    needed = largest + MIN_TEST_CASES
    pool: list[str] = []
    test: list[str] = []
    for subject in _shuffled_subjects(groups, np.random.default_rng([seed, 1])):
        (pool if len(pool) < largest else test).extend(groups[subject])
    if len(test) < MIN_TEST_CASES:
        raise ConfigError(
            f"config key 'folds.label_amounts': up to {largest} training labels plus a test set "
            f"need at least {needed} labelled cases but the manifest '{manifest.path}' has "
            f"{n_cases}; lower the largest label amount"
        )
    pool.sort()
    test.sort()
    splits = []
    for r in range(repeats):
        order = [pool[i] for i in np.random.default_rng([seed, 2, r]).permutation(len(pool))]
        for n in sorted(set(amounts)):
            splits.append(
                Split(
                    name=f"labels_{n}_rep_{r}",
                    seed=seed,
                    train_moving=sorted(order[:n]),
                    train_fixed=_fixed_images(manifest, pool),
                    test=test,
                    validation=list(validation),
                )
            )
    return splits


def check_subjects_apart(split: Split, manifest: Manifest) -> None:
    """Refuse a split that puts one subject on two sides of training, test and validation.

    The splitting above keeps subjects whole by construction; this check, run on every
    split before any is written, makes a leak impossible rather than merely unlikely.
    """
    sides = {
        "training": [*split.train_moving, *split.train_fixed],
        "test": split.test,
        "validation": split.validation,
    }
    seen: dict[str, tuple[str, str]] = {}
    for side, cases in sides.items():
        for case in cases:
            subject = manifest.record(case).subject
            other_side, other_case = seen.setdefault(subject, (side, case))
            if other_side != side:
                raise DeeprsError(
                    f"split {split.name} would put subject '{subject}' in {other_side} "
                    f"('{other_case}') and in {side} ('{case}'); this is a bug in "
                    "deeprs.folds, please report it"
                )


@dataclass(frozen=True)
class FoldSettings:
    """Config section ``folds`` and the study's seed (defaults in the config schema)."""

    n_folds: int
    label_amounts: list[int]
    label_amount_repeats: int
    seed: int
    validation_subjects: int = 0


def fold_names(n_folds: int) -> list[str]:
    """``fold_0`` ...: the names of the cross-validation splits."""
    return [f"fold_{k}" for k in range(n_folds)]


def label_split_names(amounts: Sequence[int], repeats: int) -> list[str]:
    """``labels_{n}_rep_{r}``: the names of the label-amount splits."""
    return [f"labels_{n}_rep_{r}" for r in range(repeats) for n in sorted(set(amounts))]


def split_names(settings: FoldSettings) -> list[str]:
    """Every split the settings make, in the order :func:`make_splits` returns them."""
    names = fold_names(settings.n_folds)
    if settings.label_amounts:
        names += label_split_names(settings.label_amounts, settings.label_amount_repeats)
    return names


def make_splits(manifest: Manifest, settings: FoldSettings) -> list[Split]:
    """The folds, then the label-amount splits (none when ``label_amounts`` is empty)."""
    validation = validation_cases(manifest, settings.validation_subjects, settings.seed)
    splits = make_folds(manifest, settings.n_folds, settings.seed, validation)
    if settings.label_amounts:
        splits += make_label_amount_splits(
            manifest,
            settings.label_amounts,
            settings.label_amount_repeats,
            settings.seed,
            validation,
        )
    return splits


def write_splits(manifest: Manifest, settings: FoldSettings, out: Path) -> list[Split]:
    """Write ``{out}/{name}.json`` for every split; return the splits."""
    splits = make_splits(manifest, settings)
    for split in splits:
        check_subjects_apart(split, manifest)
    for split in splits:
        write_json(out / f"{split.name}.json", split.to_json())
    return splits
