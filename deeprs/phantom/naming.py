"""The MM-WHS case names of the synthetic cohort; light to import (the Snakefile reads it)."""

from __future__ import annotations


def labelled_case_id(index: int) -> str:
    return f"ct_train_{1001 + index}"


def unlabelled_case_id(index: int) -> str:
    return f"ct_test_{2001 + index}"


def case_ids(n_labelled: int, n_unlabelled: int) -> tuple[list[str], list[str]]:
    """Ids of the labelled (``ct_train_1001``..) and unlabelled (``ct_test_2001``..) cases."""
    labelled = [labelled_case_id(i) for i in range(n_labelled)]
    return labelled, [unlabelled_case_id(j) for j in range(n_unlabelled)]
