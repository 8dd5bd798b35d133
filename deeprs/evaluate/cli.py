"""``deeprs evaluate``: one method on one split's test cases, to ``metrics.csv``.

Registration is scored on every ordered pair of distinct test cases: the moving label is
warped nearest-neighbour by the predicted displacement and compared with the fixed label
(Dice, HD95 in mm, % of voxels with non-positive Jacobian determinant). Segmentation is
scored on every test case: the argmax of S against the case's label. ``affine`` has no
model: every case is already affinely aligned to one reference, so its displacement is zero.
Columns of ``metrics.csv`` are documented in ``docs/architecture.md``.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from deeprs.data.cases import Manifest, Split, load_manifest, load_split
from deeprs.device import add_cpu_bf16_argument, autocast, select_device, set_threads
from deeprs.errors import DataError, DeeprsError
from deeprs.evaluate import METRICS_COLUMNS
from deeprs.evaluate.metrics import (
    dice,
    hd95,
    nonpositive_jacobian_percent,
    surface_distance_maps,
)
from deeprs.io import atomic_path
from deeprs.methods import MethodSpec, get_method
from deeprs.nets.spatial import warp
from deeprs.progress import Progress
from deeprs.train.checkpoint import load_model_info, load_models
from deeprs.train.sampling import crop_to_shape, pad_to_multiple

log = logging.getLogger(__name__)


@dataclass
class TestVolumes:
    """Test images and labels as ``(1, 1, D, H, W)`` tensors on the device, padded for the nets.

    ``shape`` is the unpadded ``(z, y, x)`` shape that predictions are cropped back to.
    """

    images: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    shape: tuple[int, int, int]


def load_test_volumes(manifest: Manifest, split: Split, device: torch.device) -> TestVolumes:
    """Pad as the trainer does (images: edge, labels: background) so the nets see the same."""
    shapes = {tuple(int(s) for s in manifest.image(case).shape) for case in split.test}
    if len(shapes) != 1:
        raise DataError(
            f"manifest '{manifest.path}': the test images of split '{split.name}' have "
            f"different shapes {sorted(shapes)}; rerun the preprocessing step"
        )

    def tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        # A copy: the arrays are read-only memory maps of the preprocessed files.
        return torch.tensor(np.asarray(array), dtype=dtype, device=device)[None, None]

    images = {
        case: tensor(pad_to_multiple(manifest.image(case)), torch.float32) for case in split.test
    }
    labels = {
        case: tensor(pad_to_multiple(manifest.label(case), mode="constant"), torch.int64)
        for case in split.test
    }
    return TestVolumes(images, labels, shapes.pop())  # type: ignore[arg-type]


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu").numpy()


def registration_pairs(test: list[str]) -> list[tuple[str, str]]:
    """All ordered (moving, fixed) pairs of distinct test cases (16 cases: 240 pairs).

    Grouped by fixed case, so that its surface distance maps are computed once per group.
    """
    return [(moving, fixed) for fixed in test for moving in test if moving != fixed]


@torch.no_grad()
def predict_displacements(
    volumes: TestVolumes, batch: list[tuple[str, str]], network: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Displacements ``(B, 3, D, H, W)`` of a batch of pairs and the moving labels they warp.

    Pairs go through the network together: on a CPU a batch of 8 costs about a third of
    8 single passes per pair. ``network`` None is the zero displacement (affine only).
    """
    moving_labels = torch.cat([volumes.labels[moving] for moving, _ in batch])
    if network is None:
        zeros = torch.zeros((len(batch), 3, *moving_labels.shape[2:]), device=moving_labels.device)
        return zeros, moving_labels
    moving_images = torch.cat([volumes.images[moving] for moving, _ in batch])
    fixed_images = torch.cat([volumes.images[fixed] for _, fixed in batch])
    displacements = network(moving_images, fixed_images).float()
    return displacements, warp(moving_labels, displacements, mode="nearest")


def registration_rows(
    volumes: TestVolumes,
    pairs: list[tuple[str, str]],
    labels: dict[str, int],
    spacing_zyx: tuple[float, float, float],
    network: nn.Module | None,
    batch_size: int = 8,
) -> Iterator[dict[str, object]]:
    """Metric rows of each pair; ``network`` None means the zero displacement (affine only)."""
    fixed_maps: tuple[str, dict[str, np.ndarray | None]] | None = None
    progress = Progress(len(pairs), "evaluate registration pairs", unit="pair")
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        displacements, warped = predict_displacements(volumes, batch, network)
        displacements = _to_numpy(crop_to_shape(displacements, volumes.shape))
        warped = _to_numpy(crop_to_shape(warped, volumes.shape))
        for k, (moving, fixed) in enumerate(batch):
            fixed_label = _to_numpy(crop_to_shape(volumes.labels[fixed], volumes.shape)[0, 0])
            if fixed_maps is None or fixed_maps[0] != fixed:
                fixed_maps = (fixed, surface_distance_maps(fixed_label, labels, spacing_zyx))
            folding = nonpositive_jacobian_percent(displacements[k])
            dices = dice(warped[k, 0], fixed_label, labels)
            distances = hd95(warped[k, 0], fixed_label, labels, spacing_zyx, fixed_maps[1])
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


@torch.no_grad()
def segmentation_rows(
    volumes: TestVolumes,
    cases: list[str],
    labels: dict[str, int],
    spacing_zyx: tuple[float, float, float],
    network: nn.Module,
) -> Iterator[dict[str, object]]:
    """Metric rows of S's argmax on each test case against its label."""
    progress = Progress(len(cases), "evaluate segmentation cases", unit="case")
    for case in cases:
        logits = network(volumes.images[case])
        predicted = _to_numpy(crop_to_shape(logits.argmax(dim=1), volumes.shape)[0]).astype(
            np.uint8
        )
        expected = _to_numpy(crop_to_shape(volumes.labels[case], volumes.shape)[0, 0])
        dices = dice(predicted, expected, labels)
        distances = hd95(predicted, expected, labels, spacing_zyx)
        for structure in labels:
            yield {
                "task": "segmentation",
                "sample": case,
                "structure": structure,
                "dice": dices[structure],
                "hd95_mm": distances[structure],
                "nonpositive_jacobian_pct": float("nan"),
            }
        progress.update()
    progress.close()


def fold_label(split: Split) -> str:
    """``fold_3`` -> ``3``; label-amount splits keep their name (``labels_4_rep_0``)."""
    match = re.fullmatch(r"fold_(\d+)", split.name)
    return match.group(1) if match else split.name


def evaluates_registration(spec: MethodSpec) -> bool:
    """Registration methods, and ``affine`` (untrained: its registration is the identity)."""
    return spec.registration or not spec.trains


def evaluate_split(
    spec: MethodSpec,
    manifest: Manifest,
    split: Split,
    models: dict[str, nn.Module],
    device: torch.device,
    batch_size: int = 8,
    cpu_bf16: bool = False,
) -> pd.DataFrame:
    """Every metric row of ``spec`` on ``split``'s test cases, columns as :data:`deeprs.evaluate.METRICS_COLUMNS`.

    The networks run under the same autocast as in training (``cpu_bf16``, always on CUDA).
    """
    for key in spec.networks:
        if key in ("registration", "segmentation") and key not in models:
            raise DataError(
                f"method '{spec.name}' needs a '{key}' network but the model file has none; "
                "rerun its training step"
            )
    if len(split.test) < 2 and evaluates_registration(spec):
        raise DataError(
            f"split '{split.name}' has {len(split.test)} test case(s) but registration is "
            "evaluated on pairs; rerun the split step with more labelled cases"
        )
    volumes = load_test_volumes(manifest, split, device)
    labels, spacing = manifest.labels, manifest.spacing_zyx
    rows: list[dict[str, object]] = []
    with autocast(device, cpu_bf16):
        if evaluates_registration(spec):
            pairs = registration_pairs(split.test)
            network = models.get("registration") if spec.registration else None
            rows += registration_rows(volumes, pairs, labels, spacing, network, batch_size)
        if spec.segmentation:
            segmentation = models["segmentation"]
            rows += segmentation_rows(volumes, split.test, labels, spacing, segmentation)
    table = pd.DataFrame(rows, columns=[c for c in METRICS_COLUMNS if c not in ("method", "fold")])
    table.insert(0, "fold", fold_label(split))
    table.insert(0, "method", spec.name)
    return table


def write_metrics(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False, na_rep="NaN", float_format="%.6g")


def _load_models(
    spec: MethodSpec, path: Path | None, manifest: Manifest, device: torch.device
) -> dict[str, nn.Module]:
    """The method's networks, after checking the model file belongs to this method and cohort."""
    if not spec.trains:
        return {}
    if path is None:
        raise DataError(f"method '{spec.name}' is trained: pass its model file with --model")
    info = load_model_info(path)
    if info["method"] != spec.name:
        raise DataError(
            f"model file '{path}' was trained for method '{info['method']}', not "
            f"'{spec.name}'; pass the model of the method you evaluate"
        )
    if info["labels"] != manifest.labels:
        raise DataError(
            f"model file '{path}' was trained with structures {info['labels']} but the "
            f"manifest '{manifest.path}' has {manifest.labels}; retrain on this cohort"
        )
    return load_models(path, device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="a name of deeprs.methods.METHODS")
    parser.add_argument("--split", type=Path, required=True, help="results/splits/<split>.json")
    parser.add_argument("--manifest", type=Path, required=True, help="preprocessed manifest.json")
    parser.add_argument("--model", type=Path, help="model.pt of a trained method")
    parser.add_argument("--out", type=Path, required=True, help="metrics.csv to write")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="registration pairs per network pass"
    )
    add_cpu_bf16_argument(parser)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    device = select_device(args.device)
    spec = get_method(args.method)
    manifest = load_manifest(args.manifest)
    split = load_split(args.split, manifest)
    models = _load_models(spec, args.model, manifest, device)
    if args.batch_size < 1:
        raise DeeprsError(f"--batch-size must be at least 1, got {args.batch_size}")
    table = evaluate_split(spec, manifest, split, models, device, args.batch_size, args.cpu_bf16)
    write_metrics(table, args.out)
    summary = table.groupby("task")["dice"].mean()
    for task, mean_dice in summary.items():
        log.info("%s %s %s: mean Dice %.3f", spec.name, split.name, task, mean_dice)
    return 0
