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
