"""`deeprs phantom`: write the synthetic cohort (called by the `phantom` rule).

The options' defaults are those of config section ``phantom`` and ``seed`` in the schema.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deeprs.config import section_defaults
from deeprs.errors import ConfigError
from deeprs.phantom.cohort import CohortSettings, generate_cohort


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = section_defaults("phantom")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write ct_train/, ct_test/ and mosaic.png into",
    )
    parser.add_argument(
        "--n-labelled",
        type=int,
        default=defaults["n_labelled"],
        help="labelled cases (image + label), named ct_train_1001..",
    )
    parser.add_argument(
        "--n-unlabelled",
        type=int,
        default=defaults["n_unlabelled"],
        help="unlabelled cases (image only), named ct_test_2001..",
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=defaults["shape"],
        metavar=("X", "Y", "Z"),
        help="voxels of the chest field of view",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=defaults["spacing"],
        metavar=("SX", "SY", "SZ"),
        help="voxel size in mm",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults["seed"],
        help="the same seed writes byte-identical files",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes that write cases in parallel"
    )


def run(args: argparse.Namespace) -> int:
    settings = CohortSettings(
        n_labelled=args.n_labelled,
        n_unlabelled=args.n_unlabelled,
        shape_xyz=tuple(args.shape),
        spacing_xyz=tuple(args.spacing),
        seed=args.seed,
    )
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {args.workers})")
    generate_cohort(args.out, settings, workers=args.workers)
    return 0
