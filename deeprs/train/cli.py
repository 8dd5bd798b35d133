"""`deeprs train`: train one method on one split (called by the `train` rule)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from deeprs.data.cases import load_manifest, load_split
from deeprs.device import DEVICE_CHOICES, add_cpu_bf16_argument, select_device
from deeprs.errors import ConfigError
from deeprs.methods import METHODS, get_method
from deeprs.train.trainer import DEFAULT_WEIGHTS, TrainSettings, train

LOG = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    parser.add_argument(
        "--manifest", required=True, type=Path, help="results/preprocessed/manifest.json"
    )
    parser.add_argument(
        "--split", required=True, type=Path, help="a split file, e.g. results/splits/fold_0.json"
    )
    parser.add_argument(
        "--out-dir", required=True, type=Path, help="where model.pt, losses.csv and losses.png go"
    )
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument(
        "--width", type=float, default=1.0, help="channel width factor of every network"
    )
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument(
        "--discriminator-lr",
        type=float,
        default=None,
        help="learning rate of the discriminator (default: --lr)",
    )
    parser.add_argument(
        "--weights",
        default="{}",
        help=f"JSON object of loss weights (defaults {json.dumps(DEFAULT_WEIGHTS)})",
    )
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    add_cpu_bf16_argument(parser)


def parse_weights(text: str) -> dict[str, float]:
    try:
        weights = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"--weights (config key 'train.weights') is not valid JSON: {error}"
        ) from None
    if not isinstance(weights, dict) or not all(
        isinstance(value, int | float) and not isinstance(value, bool) for value in weights.values()
    ):
        raise ConfigError("--weights (config key 'train.weights') must be a JSON object of numbers")
    return {str(key): float(value) for key, value in weights.items()}


def run(args: argparse.Namespace) -> int:
    method = get_method(args.method)
    settings = TrainSettings(
        iterations=args.iterations,
        width=args.width,
        lr=args.lr,
        weights=parse_weights(args.weights),
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        threads=args.threads,
        cpu_bf16=args.cpu_bf16,
        discriminator_lr=args.discriminator_lr,
    )
    manifest = load_manifest(args.manifest)
    split = load_split(args.split, manifest)
    device = select_device(args.device)
    LOG.info("training %s on %s (%s) with %s", method.name, split.name, device, settings)
    result = train(method, manifest, split, settings, args.out_dir, device)
    LOG.info("wrote %s (%.2f s per iteration)", result.model_path, result.seconds_per_iteration)
    return 0
