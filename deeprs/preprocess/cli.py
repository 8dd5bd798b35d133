"""``deeprs preprocess``: arguments and config in, :func:`preprocess_cohort` out."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from deeprs.config import load_config, validate_config
from deeprs.errors import ConfigError
from deeprs.preprocess.settings import PreprocessSettings

log = logging.getLogger(__name__)


def _parse_labels(pairs: Sequence[str]) -> dict[str, int]:
    labels: dict[str, int] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if not name or not value.strip().isdigit():
            raise ConfigError(f"--labels entry '{pair}' must look like NAME=VALUE, e.g. lv=500")
        labels[name] = int(value)
    return labels


def _sections_from_json(text: str) -> dict[str, object]:
    try:
        sections = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"--settings (config sections 'data', 'preprocess') is not JSON: {error}"
        ) from None
    if not isinstance(sections, dict) or not isinstance(sections.get("data"), dict):
        raise ConfigError("--settings must be a JSON object with a 'data' section")
    return {"data": sections["data"], "preprocess": sections.get("preprocess", {})}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="workflow config (data and preprocess sections)"
    )
    parser.add_argument(
        "--settings",
        help="JSON object with the config's 'data' and 'preprocess' sections (what the rule passes)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder, e.g. results/preprocessed"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads for elastix")
    parser.add_argument("--elastix-log", type=Path, help="file that collects elastix's logs")
    explicit = parser.add_argument_group("explicit settings (override the config)")
    explicit.add_argument("--data-dir", help="cohort folder")
    explicit.add_argument("--layout", choices=["mmwhs", "acdc"])
    explicit.add_argument("--modality", choices=["ct", "mri"])
    explicit.add_argument("--labels", nargs="+", metavar="NAME=VALUE", help="label table")
    explicit.add_argument("--reference", help="case id every case is aligned to, or auto")
    explicit.add_argument("--crop-margin-mm", type=float)
    explicit.add_argument(
        "--target-shape",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="voxels over the reference heart box: in-plane, in-plane, slice axis",
    )
    explicit.add_argument("--ct-window", type=float, nargs=2, metavar=("LOW", "HIGH"))
    explicit.add_argument("--mri-percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"))


def settings_from_arguments(args: argparse.Namespace) -> PreprocessSettings:
    """The config file or ``--settings`` sections (if any) with every explicit flag laid over
    them, validated."""
    if args.config is not None and args.settings is not None:
        raise ConfigError("give --config or --settings, not both")
    if args.config is not None:
        config = load_config(args.config)
    elif args.settings is not None:
        config = _sections_from_json(args.settings)
    elif args.data_dir is None or args.labels is None:
        raise ConfigError("give --config, or at least --data-dir and --labels")
    else:
        config = {"data": {"source": "folder", "dir": args.data_dir, "labels": {}}}
    data, preprocess = config["data"], config.setdefault("preprocess", {})
    overrides = {"dir": args.data_dir, "layout": args.layout, "modality": args.modality}
    data.update({key: value for key, value in overrides.items() if value is not None})
    if args.labels is not None:
        data["labels"] = _parse_labels(args.labels)
    flags = {
        "reference": args.reference,
        "crop_margin_mm": args.crop_margin_mm,
        "target_shape": args.target_shape,
        "ct_window": args.ct_window,
        "mri_percentiles": args.mri_percentiles,
    }
    preprocess.update({key: value for key, value in flags.items() if value is not None})
    return PreprocessSettings.from_config(validate_config(config))


def run(args: argparse.Namespace) -> int:
    from deeprs.preprocess.cohort import preprocess_cohort

    settings = settings_from_arguments(args)
    manifest = preprocess_cohort(settings, args.out, args.threads, args.elastix_log)
    log.info("wrote %s (%d cases)", Path(args.out) / "manifest.json", len(manifest["cases"]))
    return 0
