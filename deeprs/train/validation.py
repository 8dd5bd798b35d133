"""The validation signal of training: Dice of S and of R's warped labels, never on test images.

Each split names its ``validation`` cases (labelled subjects the split step set aside for
the whole study, :func:`deeprs.folds.validation_cases`). A study without them
(``folds.validation_subjects: 0``) validates on the split's own labelled training images:
that still shows whether training has converged, but it is not an estimate of
generalisation, and ``validation.csv`` says which of the two it is (column ``source``).

S is scored on every validation image, R on every ordered pair of them (the moving label
warped by R onto the fixed image), both with the forward passes evaluation uses
(:mod:`deeprs.inference.networks`), without gradients and without touching any random
generator, so validating changes nothing of the training run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from deeprs.data.cases import Manifest, Split
from deeprs.inference.networks import (
    displacements,
    segmentation_labels,
    volume_tensor,
    warp_label,
)
from deeprs.io import atomic_path
from deeprs.nets.padding import crop_to_shape

VALIDATION_CSV = "validation.csv"
COLUMNS = ("iteration", "s_dice", "r_dice", "source")

PAIRS_PER_PASS = 8
"""Registration pairs per forward pass, as evaluation batches them."""


@dataclass
class ValidationSet:
    """Validation images and labels ``(1, 1, D, H, W)`` on the device, padded for the nets."""

    images: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    shape: tuple[int, int, int]
    num_classes: int
    source: str
    """``validation`` (set-aside cases) or ``training`` (the split's labelled images)."""

    @property
    def pairs(self) -> list[tuple[str, str]]:
        cases = list(self.images)
        return [(moving, fixed) for fixed in cases for moving in cases if moving != fixed]


def load_validation_set(
    manifest: Manifest, split: Split, device: torch.device, multiple: int
) -> ValidationSet:
    """The split's validation cases, or its labelled training images when it has none."""
    source = "validation" if split.validation else "training"
    cases = list(split.validation or split.train_moving)
    images = {case: volume_tensor(manifest.image(case), device, multiple) for case in cases}
    labels = {
        case: volume_tensor(manifest.label(case), device, multiple, label=True) for case in cases
    }
    shape = tuple(int(size) for size in manifest.image(cases[0]).shape)
    return ValidationSet(images, labels, shape, len(manifest.labels) + 1, source)  # type: ignore[arg-type]


def mean_dice(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the structures present in ``truth`` or ``predicted`` (background left out)."""
    scores = []
    for value in range(1, num_classes):
        a, b = predicted == value, truth == value
        total = int(a.sum() + b.sum())
        if total:
            scores.append(2.0 * int(np.logical_and(a, b).sum()) / total)
    return float(np.mean(scores)) if scores else 1.0


def _cropped(tensor: torch.Tensor, shape: tuple[int, int, int]) -> np.ndarray:
    return crop_to_shape(tensor, shape).to("cpu").numpy()


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
    """Mean S Dice over the images and mean R Dice over the ordered pairs (NaN without the net)."""
    networks = [net for net in (registration, segmentation) if net is not None]
    modes = _in_eval_mode(networks)
    try:
        s_dice = float("nan")
        if segmentation is not None:
            scores = []
            for case, image in data.images.items():
                predicted = segmentation_labels(segmentation, image, cpu_bf16)[:, None]
                truth = data.labels[case]
                scores.append(
                    mean_dice(
                        _cropped(predicted, data.shape),
                        _cropped(truth, data.shape),
                        data.num_classes,
                    )
                )
            s_dice = float(np.mean(scores))
        r_dice = float("nan")
        if registration is not None:
            scores = []
            pairs = data.pairs
            for start in range(0, len(pairs), PAIRS_PER_PASS):
                batch = pairs[start : start + PAIRS_PER_PASS]
                moving = torch.cat([data.images[m] for m, _ in batch])
                fixed = torch.cat([data.images[f] for _, f in batch])
                field = displacements(registration, moving, fixed, cpu_bf16)
                warped = warp_label(torch.cat([data.labels[m] for m, _ in batch]), field)
                for index, (_, fixed_case) in enumerate(batch):
                    scores.append(
                        mean_dice(
                            _cropped(warped[index : index + 1], data.shape),
                            _cropped(data.labels[fixed_case], data.shape),
                            data.num_classes,
                        )
                    )
            r_dice = float(np.mean(scores)) if scores else float("nan")
    finally:
        for net, mode in zip(networks, modes, strict=True):
            net.train(mode)
    return {"s_dice": s_dice, "r_dice": r_dice}


def write_validation_csv(rows: list[dict[str, float | str]], path: Path) -> None:
    """``validation.csv``: one row per measurement, Dice in [0, 1]; empty where the method has
    no such network, or (``r_dice``) where a single validation image leaves no pair."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)
