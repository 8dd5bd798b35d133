"""Small building blocks shared by the networks: channel scaling, conv blocks, size checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MIN_CHANNELS = 4

ONEDNN_MIN_INPUT_ROWS = 20_480
"""PyTorch sends a float32 CPU convolution with a kernel of at most 3 in its last two axes,
batch 1 and ``C * D * H <= 20480`` (``use_mkldnn`` in ATen's Convolution.cpp) to its
single-image reference kernel instead of oneDNN: the stride-1 3x3x3 layers of every network
at the CPU presets' sizes (see :meth:`Conv3d.forward`)."""

ONEDNN_SPLIT_MIN_ELEMENTS = 4_096
"""Below this many input values (channels x voxels) the reference kernel is the faster one:
forward and backward, one thread, 4 channels on 8^3 take 0.62 ms split against 0.50 ms;
8 channels on 8^3 0.68 against 0.88 ms."""


class _AutocastSafe:
    """Runs the convolution in float32 where oneDNN's CPU bf16 kernels are wrong.

    With torch 2.13 on the CPU, the bf16 gradients of a 3-D convolution whose input or
    output is thinner than its kernel along some axis (a side of 2 voxels for a 3x3x3
    kernel, 3-4 for a 5x5x5 one: the bottlenecks of small volumes) came back with NaN or
    uninitialised values, differently from run to run. Such layers are tiny, so float32
    costs nothing there; every other layer keeps bf16.
    """

    def _too_thin(self, shape: Sequence[int]) -> bool:
        smallest = max(3, *self.kernel_size)  # type: ignore[attr-defined]
        return min(*shape, *self._output_shape(shape)) < smallest  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor, *args: object) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            if self._too_thin(x.shape[2:]):
                with torch.autocast("cpu", enabled=False):
                    return super().forward(x.float(), *args)  # type: ignore[misc]
        return super().forward(x, *args)  # type: ignore[misc]


class Conv3d(_AutocastSafe, nn.Conv3d):
    """``nn.Conv3d`` that is safe under CPU bf16 autocast (see :class:`_AutocastSafe`) and
    takes oneDNN's kernels for small float32 volumes on the CPU.

    A batch-1 float32 stride-1 convolution that PyTorch would run through its reference
    kernel (:data:`ONEDNN_MIN_INPUT_ROWS`) is computed instead as a batch of two: the two
    halves of the volume along its longest axis, each with the ``kernel - 1`` rows of
    overlap it needs, so the same sums (float rounding aside) in oneDNN, forward and
    backward. One thread, forward and backward of a 16->16 3x3x3 convolution on 32^3:
    153-157 ms by the reference kernel, 20-23 ms as two halves, on an AVX-512 CPU without
    bf16 (``deeprs bench`` for the whole step).
    """

    def forward(self, x: torch.Tensor, *args: object) -> torch.Tensor:
        axis = self._split_axis(x)
        if axis is None:
            return super().forward(x, *args)
        return self._forward_in_two_halves(x, axis)

    def _split_axis(self, x: torch.Tensor) -> int | None:
        """The axis to split ``x`` along for oneDNN, or None where PyTorch picks well."""
        if (
            x.device.type != "cpu"
            or x.dtype != torch.float32
            or torch.is_autocast_enabled("cpu")
            or x.dim() != 5
            or x.shape[0] != 1
            or self.groups != 1
            or self.padding_mode != "zeros"
            or isinstance(self.padding, str)
            or any(step != 1 for step in (*self.stride, *self.dilation))
            or self.kernel_size[-1] * self.kernel_size[-2] == 1
            or max(self.kernel_size[-2:]) > 3
            or x.shape[1] * x.shape[2] * x.shape[3] > ONEDNN_MIN_INPUT_ROWS
            or x.numel() < ONEDNN_SPLIT_MIN_ELEMENTS  # batch 1: one image's values
        ):
            return None
        outputs = self._output_shape(x.shape[2:])
        even = [axis for axis, size in enumerate(outputs) if size % 2 == 0]
        return 2 + max(even, key=lambda axis: outputs[axis]) if even else None

    def _forward_in_two_halves(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        spatial = axis - 2
        pad, kernel = self.padding[spatial], self.kernel_size[spatial]
        widths = [0] * 6
        widths[2 * (4 - axis)] = widths[2 * (4 - axis) + 1] = pad
        padded = F.pad(x, widths)
        half = (x.shape[axis] + 2 * pad - kernel + 1) // 2
        rows = half + kernel - 1
        halves = torch.cat((padded.narrow(axis, 0, rows), padded.narrow(axis, half, rows)))
        padding = list(self.padding)
        padding[spatial] = 0
        out = F.conv3d(halves, self.weight, self.bias, 1, padding, 1, 1)
        return torch.cat((out[:1], out[1:]), dim=axis)

    def _output_shape(self, shape: Sequence[int]) -> list[int]:
        return [
            (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1
            for size, pad, dil, kernel, stride in zip(
                shape, self.padding, self.dilation, self.kernel_size, self.stride, strict=True
            )
        ]


class ConvTranspose3d(_AutocastSafe, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` that is safe under CPU bf16 autocast."""

    def _output_shape(self, shape: Sequence[int]) -> list[int]:
        return [
            (size - 1) * stride - 2 * pad + dil * (kernel - 1) + 1
            for size, pad, dil, kernel, stride in zip(
                shape, self.padding, self.dilation, self.kernel_size, self.stride, strict=True
            )
        ]


def he_init_(network: nn.Module, negative_slope: float) -> None:
    """He (Kaiming) normal initialisation of every convolution, biases zero.

    For R, which has no normalisation. PyTorch's default draws weights with variance
    1/(3 fan_in), so activations shrink layer by layer: in R their spread fell from 0.32
    after the first convolution to 0.02-0.07 in the deeper ones, and R barely moved in its
    first hundred updates. He initialisation for the slope of the following
    (Leaky/P)ReLU keeps the spread; R's Dice after the demo's 200 iterations rose from 67.7
    to 71.6 % on fold 0. Networks with instance normalisation do not need it. D keeps the
    default: He-initialised, it made Adv-Reg's Dice on fold 0 fall from 69.9 to 64.7 %.
    """
    for module in network.modules():
        if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
            nn.init.kaiming_normal_(module.weight, a=negative_slope)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def scale_channels(channels: Sequence[int], width: float) -> list[int]:
    """Multiply channel counts by ``width`` (rounded, at least 4) for thinner CPU presets."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return [max(MIN_CHANNELS, round(count * width)) for count in channels]


def check_divisible(x: torch.Tensor, divisor: int, network: str) -> None:
    """Raise a ValueError naming the nearest valid sizes if a spatial size is not a multiple.

    The trainer pads volumes to a multiple of the network's ``size_divisor``; this catches
    a caller that forgot.
    """
    if x.dim() != 5:
        raise ValueError(f"{network} expects (N, C, D, H, W), got shape {tuple(x.shape)}")
    for size in x.shape[2:]:
        if size % divisor:
            upper = -(-size // divisor) * divisor
            lower = size // divisor * divisor
            crop = f" or crop it to {lower}" if lower else ""
            raise ValueError(
                f"{network} needs spatial sizes divisible by {divisor}, got "
                f"{tuple(x.shape[2:])}: pad {size} to {upper}{crop}"
            )


NORMS = ("instance", "batch", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The normalisation after a convolution: ``"instance"``, ``"batch"`` or ``"none"``."""
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ConvNormAct(nn.Sequential):
    """3x3x3 convolution, normalisation and PReLU (one learned slope per channel).

    Instance normalisation by default because training runs with batch size 1, where batch
    statistics are noisy and differ between training and evaluation.

    PReLU rather than LeakyReLU(0.01): after instance normalisation half of every feature
    map is negative, and a fixed near-zero slope silences it. With the few channels of the
    CPU presets (8 at the top level at width 0.5) the 3D U-Net then learned the seven
    structures one at a time and, for some seeds, found only two of them in 200 iterations
    (test Dice 18-63 % over four seeds on the demo's fold 0); with PReLU it was 53-79 %.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "instance") -> None:
        super().__init__(
            Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
            norm_layer(norm, out_channels),
            nn.PReLU(out_channels),
        )


class DoubleConv(nn.Sequential):
    """Two :class:`ConvNormAct` in a row: one level of a 3D U-Net (Cicek et al.)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "instance") -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, norm),
            ConvNormAct(out_channels, out_channels, norm),
        )
