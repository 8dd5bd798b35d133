"""What the Snakefile asks of the package while it builds the DAG, without importing torch:
the names of runs and the accelerators a job needs."""

from __future__ import annotations

import platform
import shutil
import sys
from pathlib import Path


def method_of_run(run: str) -> str:
    """``deeprs`` for the run ``deeprs``, ``unet3d`` for the run ``label_amount/unet3d``."""
    return run.split("/")[-1]


# The two searches (config section `budget`) write each run below
# ``{results}/budget/{search}/{method}/{split}``, where ``{search}`` names what the run varies:
# ``lr_0.003`` (one learning rate for R, S and D) or ``fold_1000`` (the folding penalty's
# weight). The rule ``train_search`` matches them by ``SEARCH_PATTERN``.
SEARCH_KINDS = ("lr", "fold")
SEARCH_PATTERN = rf"(?:{'|'.join(SEARCH_KINDS)})_[0-9.e+-]+"


def search_name(kind: str, value: float) -> str:
    """``lr_0.003`` for the learning-rate search, ``fold_1000`` for the penalty's search."""
    if kind not in SEARCH_KINDS:
        raise ValueError(f"unknown search {kind!r}: one of {', '.join(SEARCH_KINDS)}")
    return f"{kind}_{value:g}"


def parse_search_name(name: str) -> tuple[str, float]:
    """The inverse of ``search_name``: ``("lr", 0.003)`` for ``lr_0.003``."""
    kind, _, value = name.partition("_")
    if kind not in SEARCH_KINDS or not value:
        raise ValueError(f"not a search run's name: {name!r} (expected e.g. lr_0.003 or fold_10)")
    return kind, float(value)


def search_folder(results: Path, search: str, method: str, split: str) -> Path:
    """The folder of the search run named ``search`` (the rule ``train_search`` passes its
    wildcards here)."""
    return Path(results) / "budget" / search / method / split


def search_run_folder(results: Path, kind: str, value: float, method: str, split: str) -> Path:
    """Where one search run of ``method`` on ``split`` lives (the rule ``train_search``)."""
    return search_folder(results, search_name(kind, value), method, split)


def accelerator_present() -> bool:
    """Whether this machine has a GPU that ``device: auto`` would pick (CUDA or Apple MPS).

    Decided from the driver (an NVIDIA device file or ``nvidia-smi``) and the platform, so
    that building the DAG does not import torch; ``deeprs.device.select_device`` makes the
    real choice inside the job.
    """
    nvidia = Path("/proc/driver/nvidia/gpus")
    if (nvidia.is_dir() and any(nvidia.iterdir())) or shutil.which("nvidia-smi"):
        return True
    return sys.platform == "darwin" and platform.machine() == "arm64"


def training_gpus(device: str) -> int:
    """The ``gpu`` resource of a training-like job: 1 on an accelerator, else 0 (so that
    CPU-only machines run several jobs side by side; the profile caps ``gpu``)."""
    if device == "auto":
        return int(accelerator_present())
    return int(device != "cpu")
