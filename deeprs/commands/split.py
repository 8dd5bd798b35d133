"""``deeprs split``: write the folds and the label-amount splits (called by the ``split`` rule)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from deeprs.config import read_section
from deeprs.data.cases import load_manifest
from deeprs.folds import FoldSettings, write_splits

LOG = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, required=True, help="preprocessed manifest.json")
    parser.add_argument("--out", type=Path, required=True, help="folder for the split files")
    parser.add_argument(
        "--settings",
        default="{}",
        help="JSON object of config section 'folds' and 'seed' (schema defaults for the rest)",
    )


def run(args: argparse.Namespace) -> int:
    settings = FoldSettings(**read_section(args.settings, "folds"))
    for split in write_splits(load_manifest(args.manifest), settings, args.out):
        LOG.info(
            "%s: %d moving, %d fixed, %d test",
            split.name,
            len(split.train_moving),
            len(split.train_fixed),
            len(split.test),
        )
    return 0
