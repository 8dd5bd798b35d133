"""Execution settings that make training faster without changing what it computes.

Measured with ``deeprs bench`` (numbers in the README's Benchmark section): storing the
networks' weights and the input volumes as ``channels_last_3d`` lets oneDNN run the 3-D
convolutions of R, S and D in its fast (NDHWC) layout on the CPU; on CUDA cuDNN picks
its algorithms per shape once (``cudnn.benchmark``), which pays because every training
step has the same shapes. The layout change only reorders memory: values stay float32 and
the losses agree with the contiguous layout to float rounding.

The layout is chosen per network, by measurement: PyTorch's instance normalisation
returns contiguous maps whatever its input, so an instance-normalised network (S) in
channels_last reorders every feature map twice per layer. On small volumes that is cheap
and channels_last still wins; on large ones it does not. One DeepRS joint step, 1 thread,
CPU time measured in turns in one process: at 32^3 (width 0.5) S in channels_last 0.314 s
against 0.345 s contiguous; at 64x64x48 (width 1) 3.49 s against 3.19 s. Networks
without instance normalisation (R, D) keep channels_last at every size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PerfOptions:
    """Switches of :func:`prepare_networks` and :func:`prepare_volume`."""

    channels_last: bool = True
    cudnn_benchmark: bool = True
    contiguous_normalised_from_voxels: int = 100_000
    """Volumes of at least this many voxels run instance-normalised networks contiguous."""


def default_options(device: torch.device) -> PerfOptions:
    """What pays on ``device``: channels_last on the CPU and CUDA, cudnn.benchmark on CUDA."""
    return PerfOptions(channels_last=device.type in {"cpu", "cuda"}, cudnn_benchmark=True)


def prepare_networks(
    networks: Iterable[nn.Module | None],
    options: PerfOptions,
    volume_shape: Sequence[int] | None = None,
) -> None:
    """Move each network's weights to the layout that pays for it (in place).

    ``volume_shape`` is the spatial shape the networks will see; without it every network
    takes channels_last (when ``options`` asks for it).
    """
    if options.cudnn_benchmark and torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = True
    if not options.channels_last:
        return
    for network in networks:
        if network is None:
            continue
        if channels_last_pays(network, volume_shape, options):
            network.to(memory_format=torch.channels_last_3d)
        else:
            network.to(memory_format=torch.contiguous_format)
            network.register_forward_pre_hook(_contiguous_inputs)


def channels_last_pays(
    network: nn.Module, volume_shape: Sequence[int] | None, options: PerfOptions
) -> bool:
    """False only for an instance-normalised network on a large volume (see the module)."""
    if volume_shape is None or math.prod(volume_shape) < options.contiguous_normalised_from_voxels:
        return True
    return not any(isinstance(module, nn.InstanceNorm3d) for module in network.modules())


def _contiguous_inputs(_: nn.Module, inputs: tuple[object, ...]) -> tuple[object, ...]:
    """Forward pre-hook: the channels_last volumes in the layout of a contiguous network."""
    return tuple(
        value.contiguous() if isinstance(value, torch.Tensor) else value for value in inputs
    )


def prepare_volume(volume: torch.Tensor, options: PerfOptions) -> torch.Tensor:
    """A ``(N, C, D, H, W)`` input in the layout of ``options`` (same values)."""
    if options.channels_last and volume.dim() == 5:
        return volume.contiguous(memory_format=torch.channels_last_3d)
    return volume
