"""``deeprs export``: a training step's ``model.pt`` + the cohort's ``plan.json`` -> bundle."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from deeprs.inference.bundle import export_bundle

LOG = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, required=True, help="results/<method>/<split>/model.pt"
    )
    parser.add_argument("--plan", type=Path, required=True, help="results/preprocessed/plan.json")
    parser.add_argument("--out", type=Path, required=True, help="bundle file to write (bundle.pt)")
    parser.add_argument("--split", default="", help="name of the split it was trained on")


def run(args: argparse.Namespace) -> int:
    path = export_bundle(args.model, args.plan, args.out, args.split)
    LOG.info("wrote %s", path)
    return 0
