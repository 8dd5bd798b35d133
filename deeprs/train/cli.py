"""`deeprs train`: train one method on one split (called by the `train` rule)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from deeprs.config import job_defaults
from deeprs.data.cases import load_manifest, load_split
from deeprs.device import DEVICE_CHOICES, select_device, set_threads, uses_mixed_precision
from deeprs.methods import METHODS, get_method
from deeprs.train.trainer import TrainSettings, train

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
        "--out-dir",
        required=True,
        type=Path,
        help="where model.pt, losses.csv, losses.png and validation.csv go",
    )
    parser.add_argument(
        "--settings",
        default="{}",
        help="JSON object of config section 'train' and 'seed', e.g. "
        '\'{"iterations": 200, "lr": 0.003}\' (schema defaults for the rest)',
    )
    job = job_defaults("train")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default=job["device"])
    parser.add_argument("--threads", type=int, default=job["threads"], help="CPU threads for torch")


def run(args: argparse.Namespace) -> int:
    method = get_method(args.method)
    settings = TrainSettings.from_json(args.settings)
    manifest = load_manifest(args.manifest)
    split = load_split(args.split, manifest)
    device = select_device(args.device)
    set_threads(args.threads)
    LOG.info("training %s on %s (%s) with %s", method.name, split.name, device, settings)
    precision = "bf16 autocast" if uses_mixed_precision(device, settings.cpu_bf16) else "float32"
    LOG.info("networks run in %s on this %s", precision, device)
    result = train(method, manifest, split, settings, args.out_dir, device)
    LOG.info("wrote %s (%.2f s per iteration)", result.model_path, result.seconds_per_iteration)
    return 0
