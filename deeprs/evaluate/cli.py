"""``deeprs evaluate``: one method on one split's test cases, to ``metrics.csv``.

A thin command over :mod:`deeprs.evaluate.engine`, which scores the predictions of
:mod:`deeprs.inference`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import SimpleITK as sitk

from deeprs.data.cases import load_manifest, load_split
from deeprs.device import add_runtime_arguments, select_device, set_threads
from deeprs.errors import DeeprsError
from deeprs.evaluate.engine import evaluate_split, load_networks, write_metrics
from deeprs.methods import get_method

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="a name of deeprs.methods.METHODS")
    parser.add_argument("--split", type=Path, required=True, help="results/splits/<split>.json")
    parser.add_argument("--manifest", type=Path, required=True, help="preprocessed manifest.json")
    parser.add_argument("--model", type=Path, help="model.pt of a trained method")
    parser.add_argument("--out", type=Path, required=True, help="metrics.csv to write")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="registration pairs per network pass"
    )
    add_runtime_arguments(parser, "torch and SimpleITK")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    # Native scoring resamples with SimpleITK, which would otherwise use every core.
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    device = select_device(args.device)
    spec = get_method(args.method)
    manifest = load_manifest(args.manifest)
    split = load_split(args.split, manifest)
    networks = load_networks(spec, args.model, manifest, device)
    if args.batch_size < 1:
        raise DeeprsError(f"--batch-size must be at least 1, got {args.batch_size}")
    table = evaluate_split(spec, manifest, split, networks, device, args.batch_size, args.cpu_bf16)
    write_metrics(table, args.out)
    summary = table.groupby("task")["dice"].mean()
    for task, mean_dice in summary.items():
        log.info("%s %s %s: mean Dice %.3f", spec.name, split.name, task, mean_dice)
    return 0
