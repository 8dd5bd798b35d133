"""``deeprs check-config``: validate a config file against the schema."""

from __future__ import annotations

import argparse
from pathlib import Path

from deeprs.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configfile", type=Path, help="YAML config to check")


def run(args: argparse.Namespace) -> int:
    load_config(args.configfile)
    print(f"{args.configfile}: valid")
    return 0
