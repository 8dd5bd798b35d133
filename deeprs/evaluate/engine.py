"""Scoring one method on one split's test cases (the engine behind ``deeprs evaluate``).

Registration is scored on every ordered pair of distinct test cases: the moving label is
warped nearest-neighbour by the predicted displacement and compared with the fixed label
(Dice, HD95 in mm, % of voxels with non-positive Jacobian determinant). Segmentation is
scored on every test case: the argmax of S against the case's label on the training grid
(``segmentation``), and, from the same probabilities carried back onto the image's own
grid, against the label file as drawn (``segmentation_native``, :mod:`deeprs.evaluate.native`).
``affine`` has no model: every case is already affinely aligned to one reference, so its
displacement is zero.
Predictions come from :mod:`deeprs.inference.networks`, the functions the overlay figures
and ``deeprs predict`` use, under the training's autocast. Columns of ``metrics.csv`` are
documented in ``docs/architecture.md``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from deeprs.data.cases import Manifest, Split
from deeprs.errors import DataError
from deeprs.evaluate import METRICS_COLUMNS
from deeprs.evaluate.metrics import (
    dice,
    hd95,
    nonpositive_jacobian_percent,
    surface_distance_maps,
)
from deeprs.inference.model import TrainedModel, load_model_file
from deeprs.inference.networks import (
    displacements,
    segmentation_probabilities,
    use_training_layout,
    volume_tensor,
    warp_image,
    warp_label,
)
from deeprs.io import atomic_path
from deeprs.methods import MethodSpec
from deeprs.nets.padding import NETWORK_MULTIPLE, crop_to_shape
from deeprs.progress import Progress

if TYPE_CHECKING:  # SimpleITK: training's validation imports this module without it
    from deeprs.evaluate.native import NativeScoring


@dataclass
class TestVolumes:
    """Test images and labels as ``(1, 1, D, H, W)`` tensors on the device, padded for the nets.

    ``shape`` is the unpadded ``(z, y, x)`` shape that predictions are cropped back to.
    """

    images: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    shape: tuple[int, int, int]

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        """The ``(z, y, x)`` shape the networks see."""
        return tuple(next(iter(self.images.values())).shape[2:])  # type: ignore[return-value]


def load_test_volumes(
    manifest: Manifest,
    split: Split,
    device: torch.device,
    multiple: int = NETWORK_MULTIPLE,
    cases: list[str] | None = None,
) -> TestVolumes:
    """Pad as the trainer does (images: edge, labels: background) so the nets see the same."""
    cases = list(split.test if cases is None else cases)
    shapes = {tuple(int(s) for s in manifest.image(case).shape) for case in cases}
    if len(shapes) != 1:
        raise DataError(
            f"manifest '{manifest.path}': the images of split '{split.name}' to score have "
            f"different shapes {sorted(shapes)}; rerun the preprocessing step"
        )
    images = {case: volume_tensor(manifest.image(case), device, multiple) for case in cases}
    labels = {
        case: volume_tensor(manifest.label(case), device, multiple, label=True) for case in cases
    }
    return TestVolumes(images, labels, shapes.pop())  # type: ignore[arg-type]


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu").numpy()


def registration_pairs(test: list[str]) -> list[tuple[str, str]]:
    """All ordered (moving, fixed) pairs of distinct test cases (16 cases: 240 pairs).

    Grouped by fixed case, so that its surface distance maps are computed once per group.
    """
    return [(moving, fixed) for fixed in test for moving in test if moving != fixed]


@dataclass
class PairPrediction:
    """A batch of pairs on the unpadded grid: displacements ``(B, 3, z, y, x)`` in voxels,
    warped moving labels ``(B, z, y, x)`` and, when asked for, warped moving images."""

    displacements: np.ndarray
    labels: np.ndarray
    images: np.ndarray | None


def predict_pairs(
    volumes: TestVolumes,
    batch: list[tuple[str, str]],
    network: torch.nn.Module | None,
    cpu_bf16: bool = False,
    with_images: bool = False,
) -> PairPrediction:
    """R on a batch of (moving, fixed) pairs in one pass; ``network`` None is affine only.

    Pairs go through the network together: on a CPU a batch of 8 costs about a third of
    8 single passes per pair.
    """
    moving_images = torch.cat([volumes.images[moving] for moving, _ in batch])
    fixed_images = torch.cat([volumes.images[fixed] for _, fixed in batch])
    moving_labels = torch.cat([volumes.labels[moving] for moving, _ in batch])
    field = displacements(network, moving_images, fixed_images, cpu_bf16)
    shape = volumes.shape
    return PairPrediction(
        displacements=_to_numpy(crop_to_shape(field, shape)),
        labels=_to_numpy(crop_to_shape(warp_label(moving_labels, field), shape)[:, 0]),
        images=(
            _to_numpy(crop_to_shape(warp_image(moving_images, field), shape)[:, 0])
            if with_images
            else None
        ),
    )


def predict_probabilities(
    volumes: TestVolumes, case: str, network: torch.nn.Module, cpu_bf16: bool = False
) -> np.ndarray:
    """S's class probabilities ``(C, z, y, x)`` (float32) of one test case."""
    probabilities = segmentation_probabilities(network, volumes.images[case], cpu_bf16)
    return _to_numpy(crop_to_shape(probabilities, volumes.shape)[0])


def predict_segmentation(
    volumes: TestVolumes, case: str, network: torch.nn.Module, cpu_bf16: bool = False
) -> np.ndarray:
    """S's argmax class map ``(z, y, x)`` (uint8) of one test case."""
    return predict_probabilities(volumes, case, network, cpu_bf16).argmax(axis=0).astype(np.uint8)


def unpadded_label(volumes: TestVolumes, case: str) -> np.ndarray:
    return _to_numpy(crop_to_shape(volumes.labels[case], volumes.shape)[0, 0])


def registration_rows(
    volumes: TestVolumes,
    pairs: list[tuple[str, str]],
    labels: dict[str, int],
    spacing_zyx: tuple[float, float, float],
    network: torch.nn.Module | None,
    batch_size: int = 8,
    cpu_bf16: bool = False,
) -> Iterator[dict[str, object]]:
    """Metric rows of each pair; ``network`` None means the zero displacement (affine only)."""
    fixed_maps: tuple[str, dict[str, np.ndarray | None]] | None = None
    progress = Progress(len(pairs), "evaluate registration pairs", unit="pair")
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        predicted = predict_pairs(volumes, batch, network, cpu_bf16)
        for k, (moving, fixed) in enumerate(batch):
            fixed_label = unpadded_label(volumes, fixed)
            if fixed_maps is None or fixed_maps[0] != fixed:
                fixed_maps = (fixed, surface_distance_maps(fixed_label, labels, spacing_zyx))
            folding = nonpositive_jacobian_percent(predicted.displacements[k])
            warped = predicted.labels[k]
            dices = dice(warped, fixed_label, labels)
            distances = hd95(warped, fixed_label, labels, spacing_zyx, fixed_maps[1])
            for structure in labels:
                yield {
                    "task": "registration",
                    "sample": f"{moving}->{fixed}",
                    "structure": structure,
                    "dice": dices[structure],
                    "hd95_mm": distances[structure],
                    "nonpositive_jacobian_pct": folding,
                }
        progress.update(len(batch))
    progress.close()


def scored_rows(
    task: str,
    sample: str,
    predicted: np.ndarray,
    expected: np.ndarray,
    labels: dict[str, int],
    spacing_zyx: tuple[float, float, float],
) -> list[dict[str, object]]:
    """One segmentation row per structure: Dice and HD95 (mm) of ``predicted`` against ``expected``."""
    dices = dice(predicted, expected, labels)
    distances = hd95(predicted, expected, labels, spacing_zyx)
    return [
        {
            "task": task,
            "sample": sample,
            "structure": structure,
            "dice": dices[structure],
            "hd95_mm": distances[structure],
            "nonpositive_jacobian_pct": float("nan"),
        }
        for structure in labels
    ]


def segmentation_rows(
    volumes: TestVolumes,
    cases: list[str],
    labels: dict[str, int],
    spacing_zyx: tuple[float, float, float],
    network: torch.nn.Module,
    cpu_bf16: bool = False,
    native: NativeScoring | None = None,
) -> list[dict[str, object]]:
    """Metric rows of S's argmax on each test case against its label on the grid, then
    (with ``native``) on each image's own grid; S runs once per case for both."""
    grid_rows: list[dict[str, object]] = []
    native_rows: list[dict[str, object]] = []
    progress = Progress(len(cases), "evaluate segmentation cases", unit="case")
    for case in cases:
        probabilities = predict_probabilities(volumes, case, network, cpu_bf16)
        predicted = probabilities.argmax(axis=0).astype(np.uint8)
        expected = unpadded_label(volumes, case)
        grid_rows += scored_rows("segmentation", case, predicted, expected, labels, spacing_zyx)
        if native is not None:
            own = native.case(case)
            native_rows += scored_rows(
                "segmentation_native",
                case,
                native.predicted_classes(probabilities, own),
                own.classes,
                labels,
                own.spacing_zyx,
            )
        progress.update()
    progress.close()
    return grid_rows + native_rows


def fold_label(split: Split) -> str:
    """``fold_3`` -> ``3``; label-amount splits keep their name (``labels_4_rep_0``)."""
    match = re.fullmatch(r"fold_(\d+)", split.name)
    return match.group(1) if match else split.name


def evaluates_registration(spec: MethodSpec) -> bool:
    """Registration methods, and ``affine`` (untrained: its registration is the identity)."""
    return spec.registration or not spec.trains


def check_networks(spec: MethodSpec, networks: dict[str, torch.nn.Module]) -> None:
    for key in ("registration", "segmentation"):
        if key in spec.networks and key not in networks:
            raise DataError(
                f"method '{spec.name}' needs a '{key}' network but the model file has none; "
                "rerun its training step"
            )


def evaluate_split(
    spec: MethodSpec,
    manifest: Manifest,
    split: Split,
    networks: dict[str, torch.nn.Module],
    device: torch.device,
    batch_size: int = 8,
    cpu_bf16: bool = False,
) -> pd.DataFrame:
    """Every metric row of ``spec`` on ``split``'s test cases, columns as :data:`deeprs.evaluate.METRICS_COLUMNS`.

    The networks run under the same autocast as in training (``cpu_bf16``, always on CUDA).
    """
    check_networks(spec, networks)
    if len(split.test) < 2 and evaluates_registration(spec):
        raise DataError(
            f"split '{split.name}' has {len(split.test)} test case(s) but registration is "
            "evaluated on pairs; rerun the split step with more labelled cases"
        )
    divisors = [getattr(net, "size_divisor", 1) for net in networks.values()]
    volumes = load_test_volumes(manifest, split, device, max([NETWORK_MULTIPLE, *divisors]))
    use_training_layout(networks.values(), volumes.padded_shape)
    labels, spacing = manifest.labels, manifest.spacing_zyx
    rows: list[dict[str, object]] = []
    if evaluates_registration(spec):
        pairs = registration_pairs(split.test)
        network = networks.get("registration") if spec.registration else None
        rows += registration_rows(volumes, pairs, labels, spacing, network, batch_size, cpu_bf16)
    if spec.segmentation:
        segmentation = networks["segmentation"]
        from deeprs.evaluate.native import NativeScoring

        native = NativeScoring.for_cases(manifest, split.test)
        rows += segmentation_rows(
            volumes, split.test, labels, spacing, segmentation, cpu_bf16, native
        )
    table = pd.DataFrame(rows, columns=[c for c in METRICS_COLUMNS if c not in ("method", "fold")])
    table.insert(0, "fold", fold_label(split))
    table.insert(0, "method", spec.name)
    return table


def write_metrics(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False, na_rep="NaN", float_format="%.6g")


def load_networks(
    spec: MethodSpec, path: Path | None, manifest: Manifest, device: torch.device
) -> dict[str, torch.nn.Module]:
    """The method's networks, after checking the model file belongs to this method and cohort."""
    if not spec.trains:
        return {}
    if path is None:
        raise DataError(f"method '{spec.name}' is trained: pass its model file with --model")
    model: TrainedModel = load_model_file(path, device)
    if model.method != spec.name:
        raise DataError(
            f"model file '{path}' was trained for method '{model.method}', not "
            f"'{spec.name}'; pass the model of the method you evaluate"
        )
    if model.labels != manifest.labels:
        raise DataError(
            f"model file '{path}' was trained with structures {model.labels} but the "
            f"manifest '{manifest.path}' has {manifest.labels}; retrain on this cohort"
        )
    return model.networks
