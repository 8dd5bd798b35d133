"""S (and the body of D): a compact 3D U-Net after Cicek et al. (MICCAI 2016)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deeprs.nets.blocks import Conv3d, ConvTranspose3d, DoubleConv, check_divisible, scale_channels


class UNet3D(nn.Module):
    """Image -> per-voxel logits.

    Each level is two 3x3x3 conv + norm + PReLU (:class:`deeprs.nets.blocks.ConvNormAct`;
    instance norm by default); max-pooling goes down, a 2x2x2 transposed convolution goes
    up and its output is concatenated with the encoder feature of the same level.
    ``features`` lists the channels per level (the last one is the bottleneck), so inputs
    must be divisible by ``2 ** (len(features) - 1)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (16, 32, 64, 128),
        width: float = 1.0,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        if len(features) < 2:
            raise ValueError(f"UNet3D needs at least two levels, got features={list(features)}")
        self.config = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            features=list(features),
            width=width,
            norm=norm,
        )
        channels = scale_channels(features, width)
        self.size_divisor = 2 ** (len(channels) - 1)
        self.down = nn.ModuleList()
        previous = in_channels
        for count in channels:
            self.down.append(DoubleConv(previous, count, norm))
            previous = count
        self.pool = nn.MaxPool3d(kernel_size=2)
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for count in reversed(channels[:-1]):
            self.upsample.append(ConvTranspose3d(previous, count, kernel_size=2, stride=2))
            self.up.append(DoubleConv(2 * count, count, norm))
            previous = count
        self.head = Conv3d(previous, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, self.size_divisor, type(self).__name__)
        skips = []
        for index, block in enumerate(self.down):
            x = block(x if index == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for upsample, block in zip(self.upsample, self.up, strict=True):
            x = block(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.head(x)
