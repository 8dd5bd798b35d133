"""Training data in memory and the seeded order in which it is visited.

The training cases of one split are small enough to live on the device for the whole run
(the paper's 44 volumes of 128x128x96 are about 290 MB in float32), so each iteration only
picks tensors. The order is a fresh permutation of all (moving, fixed) pairs per epoch,
drawn from ``(seed, epoch)``: the pair of any iteration follows from the seed alone, so a
resumed run visits exactly the pairs the uninterrupted run would have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

from deeprs.data.cases import Manifest, Split
from deeprs.errors import DataError
from deeprs.nets.padding import (  # noqa: F401  (crop_to_shape: re-exported)
    NETWORK_MULTIPLE,
    crop_to_shape,
    pad_to_multiple,
    padded_shape,
)

LOG = logging.getLogger(__name__)

Item = TypeVar("Item")


@dataclass
class TrainingData:
    """The training cases of one split as ``(1, 1, D, H, W)`` tensors on the device.

    Images are float32; labels are int64 class maps (0 = background).
    ``num_classes`` counts background plus one class per structure.
    """

    images: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    num_classes: int
    shape: tuple[int, int, int]
    original_shape: tuple[int, int, int]
    moving_ids: list[str]
    fixed_ids: list[str]


def load_training_data(
    manifest: Manifest,
    split: Split,
    device: torch.device,
    labelled_fixed: bool = False,
    multiple: int = NETWORK_MULTIPLE,
) -> TrainingData:
    """Load the split's training cases, padded for the nets.

    Args:
        labelled_fixed: also use the labelled training images as fixed images (methods
            whose constraints need pairs where both images are labelled).
    """
    if not split.train_moving:
        raise DataError(f"split '{split.name}' has no train_moving cases; rerun the split step")
    fixed_ids = list(split.train_fixed)
    if labelled_fixed:
        fixed_ids += [case for case in split.train_moving if case not in fixed_ids]
    case_ids = list(dict.fromkeys([*split.train_moving, *fixed_ids]))
    shapes = {manifest.image(case).shape for case in case_ids}
    if len(shapes) != 1:
        raise DataError(
            f"manifest '{manifest.path}': the training images of split '{split.name}' have "
            f"different shapes {sorted(shapes)}; rerun the preprocessing step"
        )
    original_shape = tuple(int(size) for size in shapes.pop())
    shape = padded_shape(original_shape, multiple)
    if shape != original_shape:
        LOG.info(
            "padding the training volumes from %s to %s (z, y, x): the networks need multiples of %d",
            original_shape,
            shape,
            multiple,
        )

    def to_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        # A copy: the manifest's arrays are read-only memory maps.
        return torch.tensor(np.array(array), dtype=dtype, device=device)[None, None]

    images = {
        case: to_tensor(pad_to_multiple(manifest.image(case), multiple), torch.float32)
        for case in case_ids
    }
    # Only the split's training labels: a fixed image may be a labelled case of the cohort
    # (ACDC's label-amount pool), and its label is not this split's to use.
    labels = {
        case: to_tensor(
            pad_to_multiple(manifest.label(case), multiple, mode="constant"), torch.int64
        )
        for case in split.train_moving
    }
    num_classes = len(manifest.labels) + 1
    for case, label in labels.items():
        if int(label.max()) >= num_classes:
            raise DataError(
                f"manifest '{manifest.path}': label of case '{case}' holds class "
                f"{int(label.max())} but the manifest names only {num_classes - 1} structures"
            )
    return TrainingData(
        images=images,
        labels=labels,
        num_classes=num_classes,
        shape=shape,  # type: ignore[arg-type]
        original_shape=original_shape,  # type: ignore[arg-type]
        moving_ids=list(split.train_moving),
        fixed_ids=fixed_ids,
    )


class EpochSampler(Generic[Item]):
    """Visit ``items`` in a new seeded permutation each epoch; ``item(i)`` is stateless."""

    def __init__(self, items: list[Item], seed: int) -> None:
        if not items:
            raise ValueError("EpochSampler needs at least one item")
        self.items = list(items)
        self.seed = seed
        self._epoch = -1
        self._order: np.ndarray = np.arange(len(self.items))

    def item(self, iteration: int) -> Item:
        epoch, position = divmod(iteration, len(self.items))
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.items))
            self._epoch = epoch
        return self.items[int(self._order[position])]


def training_pairs(moving_ids: list[str], fixed_ids: list[str]) -> list[tuple[str, str]]:
    """All ordered (moving, fixed) pairs of distinct cases."""
    return [(moving, fixed) for moving in moving_ids for fixed in fixed_ids if moving != fixed]
