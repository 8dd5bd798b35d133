"""The validation signal of training: Dice of S and of R's warped labels, never on test images.

Each split names its ``validation`` cases (labelled subjects the split step set aside for
the whole study, :func:`deeprs.folds.validation_cases`). A study without them
(``folds.validation_subjects: 0``) validates on the split's own labelled training images:
that still shows whether training has converged, but it is not an estimate of
generalisation, and ``validation.csv`` says which of the two it is (column ``source``).

S is scored on every validation image, R on every ordered pair of them (the moving label
warped by R onto the fixed image), with evaluation's own loading, forward passes and
Dice (:mod:`deeprs.evaluate.engine`) on the training grid, without gradients and without
touching any random generator, so validating changes nothing of the training run. R's
folding (the share of voxels whose Jacobian determinant is <= 0, as evaluation reports it)
is recorded beside its Dice, so the curves show when a warp starts to fold, not only how
far it folds at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from deeprs.convergence import FOLDING
from deeprs.data.cases import Manifest, Split
from deeprs.evaluate.engine import (
    TestVolumes,
    load_test_volumes,
    predict_pairs,
    predict_segmentation,
    registration_pairs,
    unpadded_label,
)
from deeprs.evaluate.metrics import dice, mean_dice, mean_present, nonpositive_jacobian_percent
from deeprs.io import atomic_path

VALIDATION_CSV = "validation.csv"
COLUMNS = ("iteration", "s_dice", "r_dice", FOLDING, "source")

PAIRS_PER_PASS = 8
"""Registration pairs per forward pass, as evaluation batches them."""


@dataclass
class ValidationSet:
    """Validation images and labels on the device, loaded as evaluation loads test cases."""

    volumes: TestVolumes
    labels: dict[str, int]
    """The structure table (name: class)."""
    source: str
    """``validation`` (set-aside cases) or ``training`` (the split's labelled images)."""


def load_validation_set(
    manifest: Manifest, split: Split, device: torch.device, multiple: int
) -> ValidationSet:
    """The split's validation cases, or its labelled training images when it has none."""
    source = "validation" if split.validation else "training"
    cases = list(split.validation or split.train_moving)
    volumes = load_test_volumes(manifest, split, device, multiple, cases=cases)
    return ValidationSet(volumes, dict(manifest.labels), source)


def _in_eval_mode(networks: list[nn.Module]) -> list[bool]:
    modes = [net.training for net in networks]
    for net in networks:
        net.eval()
    return modes


def validate(
    data: ValidationSet,
    registration: nn.Module | None,
    segmentation: nn.Module | None,
    cpu_bf16: bool,
) -> dict[str, float]:
    """Mean S Dice over the images, mean R Dice and folding (%) over the ordered pairs (NaN
    without the network)."""
    volumes, labels = data.volumes, data.labels
    networks = [net for net in (registration, segmentation) if net is not None]
    modes = _in_eval_mode(networks)
    try:
        s_dice = float("nan")
        if segmentation is not None:
            s_dice = mean_present(
                [
                    mean_dice(
                        dice(
                            predict_segmentation(volumes, case, segmentation, cpu_bf16),
                            unpadded_label(volumes, case),
                            labels,
                        )
                    )
                    for case in volumes.images
                ]
            )
        r_dice = r_folding = float("nan")
        pairs = registration_pairs(list(volumes.images))
        if registration is not None and pairs:
            scores, folding = [], []
            for start in range(0, len(pairs), PAIRS_PER_PASS):
                batch = pairs[start : start + PAIRS_PER_PASS]
                predicted = predict_pairs(volumes, batch, registration, cpu_bf16)
                for index, (_, fixed) in enumerate(batch):
                    warped = predicted.labels[index]
                    scores.append(mean_dice(dice(warped, unpadded_label(volumes, fixed), labels)))
                    folding.append(nonpositive_jacobian_percent(predicted.displacements[index]))
            r_dice = mean_present(scores)
            r_folding = float(sum(folding) / len(folding))
    finally:
        for net, mode in zip(networks, modes, strict=True):
            net.train(mode)
    return {"s_dice": s_dice, "r_dice": r_dice, FOLDING: r_folding}


def write_validation_csv(rows: list[dict[str, float | str]], path: Path) -> None:
    """``validation.csv``: one row per measurement, Dice in [0, 1], folding in %; empty where
    the method has no such network, or (R's columns) where a single validation image leaves
    no pair. Rows of a run resumed from an older checkpoint lack the folding: empty there."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)
