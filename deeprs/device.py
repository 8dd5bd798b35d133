"""Device selection, mixed precision and CPU threads: the only device-specific code.

Everything else takes a ``torch.device`` and moves tensors with ``.to(device)``, so the
same code runs on a laptop CPU, an Apple GPU and a CUDA workstation.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import torch

from deeprs.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an unavailable choice is an error."""
    if name not in DEVICE_CHOICES:
        raise ConfigError(
            f"config key 'train.device': '{name}' is not one of {', '.join(DEVICE_CHOICES)}"
        )
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_available()}
    if not available[name]:
        raise ConfigError(
            f"config key 'train.device' asks for '{name}' but this machine has no such "
            "device; set it to 'auto' or 'cpu'"
        )
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 itself (AVX512-BF16 or AMX), not by emulation.

    oneDNN runs bf16 convolutions on any AVX-512 CPU, but without these instructions it
    converts to float32 and back: on an Ice Lake CPU a DeepRS step under bf16 autocast took
    0.97 CPU-s against 0.50 in float32 (32^3, width 0.5, one thread; ``deeprs bench``).
    """
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def uses_mixed_precision(device: torch.device, cpu_bf16: bool = False) -> bool:
    """bf16 autocast on CUDA; on the CPU when asked and the CPU has bf16 instructions
    (:func:`cpu_has_native_bf16`); elsewhere float32, which is then the faster."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16()


@contextlib.contextmanager
def autocast(device: torch.device, cpu_bf16: bool = False) -> Iterator[None]:
    """Mixed-precision region for the forward passes (bf16 needs no loss scaling)."""
    if uses_mixed_precision(device, cpu_bf16):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def add_cpu_bf16_argument(parser: argparse.ArgumentParser) -> None:
    """``--cpu-bf16/--no-cpu-bf16``, the config's ``train.cpu_bf16``, for train and evaluate."""
    parser.add_argument(
        "--cpu-bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bf16 autocast of the networks on the CPU too, where it has bf16 instructions "
        "(config train.cpu_bf16)",
    )


def add_runtime_arguments(parser: argparse.ArgumentParser, threads_for: str) -> None:
    """``--device``, ``--threads`` (CPU threads for ``threads_for``) and ``--cpu-bf16`` of the
    commands that apply trained networks (evaluate, predict, register)."""
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--threads", type=int, default=1, help=f"CPU threads for {threads_for}")
    add_cpu_bf16_argument(parser)


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch's intra-op work (the rule's ``threads``)."""
    if threads < 1:
        raise ConfigError(f"config key 'train.threads' must be at least 1, got {threads}")
    torch.set_num_threads(threads)
