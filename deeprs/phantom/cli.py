"""`deeprs phantom`: write the synthetic cohort (called by the `phantom` rule).

The rule passes config section ``phantom`` and ``seed`` as one JSON object (``--settings``);
the explicit options, for use by hand, lie over it. Defaults are the schema's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deeprs.config import read_section
from deeprs.errors import ConfigError
from deeprs.phantom.cohort import CohortSettings, generate_cohort


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write ct_train/, ct_test/ and mosaic.png into",
    )
    parser.add_argument(
        "--n-labelled",
        type=int,
        default=None,
        help="labelled cases (image + label), named ct_train_1001..",
    )
    parser.add_argument(
        "--n-unlabelled",
        type=int,
        default=None,
        help="unlabelled cases (image only), named ct_test_2001..",
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="voxels of the chest field of view",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("SX", "SY", "SZ"),
        help="voxel size in mm",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the same seed writes byte-identical files",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes that write cases in parallel"
    )
    parser.add_argument(
        "--settings",
        default="{}",
        help="JSON object of config section 'phantom' and 'seed' (what the rule passes)",
    )


def run(args: argparse.Namespace) -> int:
    section = read_section(args.settings, "phantom")
    explicit = {
        "n_labelled": args.n_labelled,
        "n_unlabelled": args.n_unlabelled,
        "shape": args.shape,
        "spacing": args.spacing,
        "seed": args.seed,
    }
    section.update({key: value for key, value in explicit.items() if value is not None})
    settings = CohortSettings(
        n_labelled=section["n_labelled"],
        n_unlabelled=section["n_unlabelled"],
        shape_xyz=tuple(section["shape"]),
        spacing_xyz=tuple(float(value) for value in section["spacing"]),
        seed=section["seed"],
    )
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {args.workers})")
    generate_cohort(args.out, settings, workers=args.workers)
    return 0
