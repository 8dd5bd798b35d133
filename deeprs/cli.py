"""The `deeprs` command: one subcommand per pipeline step.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int | None``. Modules are imported only when their subcommand runs, so
``deeprs phantom`` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from deeprs.errors import DeeprsError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("deeprs.phantom.cli", "generate the synthetic cardiac CT cohort"),
    "preprocess": ("deeprs.preprocess.cli", "crop, affine-align and resample a cohort"),
    "fix-label-header": (
        "deeprs.data.label_header",
        "copy an image's geometry onto a copy of its label (same voxel grid, lost header)",
    ),
    "split": ("deeprs.commands.split", "write the folds and the label-amount splits"),
    "train": ("deeprs.train.cli", "train one method on one fold"),
    "budget": ("deeprs.commands.budget", "learning rate and iterations from the budget search"),
    "fold-search": ("deeprs.commands.fold_search", "the folding penalty's weight from its search"),
    "evaluate": ("deeprs.evaluate.cli", "Dice, HD95 and folding of a trained method on a fold"),
    "report": ("deeprs.report.cli", "tables and figures from the metrics"),
    "overlays": ("deeprs.report.overlays", "Figs. 6-7: one slice per method, Dice per panel"),
    "export": ("deeprs.inference.export", "model.pt + preprocessing plan -> one model bundle"),
    "predict": ("deeprs.inference.predict", "label maps of new images on their own grids"),
    "register": ("deeprs.inference.register", "moved image and label, ITK affine + warp field"),
    "bench": ("deeprs.bench", "time and memory of the training steps, against a reference"),
    "check-config": ("deeprs.commands.check_config", "validate a config file against the schema"),
}


def _usage() -> str:
    lines = ["usage: deeprs <command> [options]", "", "commands:"]
    width = max(len(name) for name in SUBCOMMANDS)
    for name, (_, summary) in SUBCOMMANDS.items():
        lines.append(f"  {name:<{width}}  {summary}")
    lines.append("")
    lines.append("Run `deeprs <command> --help` for the options of one command.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if argv[0] == "--version":
        from deeprs import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"deeprs: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, summary = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"deeprs {name}", description=summary)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(module.run(args) or 0)
    except DeeprsError as error:
        print(f"deeprs {name}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A write outside deeprs.io.atomic_path (a log): still one line, still exit 2.
        print(
            f"deeprs {name}: error: no space left on device while writing "
            f"'{error.filename or 'a file'}'; free space and rerun",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
