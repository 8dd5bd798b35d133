"""Execution settings that make training faster without changing what it computes.

Measured with ``deeprs bench`` (numbers in the README's Benchmark section): storing the
networks' weights and the input volumes as ``channels_last_3d`` lets oneDNN run the 3-D
convolutions of R, S and D in its fast (NDHWC) layout on the CPU; on CUDA cuDNN picks
its algorithms per shape once (``cudnn.benchmark``), which pays because every training
step has the same shapes. The layout change only reorders memory: values stay float32 and
the losses agree with the contiguous layout to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PerfOptions:
    """Switches of :func:`prepare_networks` and :func:`prepare_volume`."""

    channels_last: bool = True
    cudnn_benchmark: bool = True


def default_options(device: torch.device) -> PerfOptions:
    """What pays on ``device``: channels_last on the CPU and CUDA, cudnn.benchmark on CUDA."""
    return PerfOptions(channels_last=device.type in {"cpu", "cuda"}, cudnn_benchmark=True)


def prepare_networks(networks: Iterable[nn.Module | None], options: PerfOptions) -> None:
    """Move the networks' weights to the layout of ``options`` (in place)."""
    if options.cudnn_benchmark and torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = True
    if not options.channels_last:
        return
    for network in networks:
        if network is not None:
            network.to(memory_format=torch.channels_last_3d)


def prepare_volume(volume: torch.Tensor, options: PerfOptions) -> torch.Tensor:
    """A ``(N, C, D, H, W)`` input in the layout of ``options`` (same values)."""
    if options.channels_last and volume.dim() == 5:
        return volume.contiguous(memory_format=torch.channels_last_3d)
    return volume
