"""V-Net baseline (Milletari et al., 3DV 2016), compact and with a width factor.

MONAI's ``VNet`` fixes its channels at 16..256, uses batch normalisation and dropout 0.5,
and needs ``in_channels`` to divide 16; we write the same layout ourselves so that CPU
presets can thin it and batch-1 training uses instance normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deeprs.nets.blocks import Conv3d, ConvTranspose3d, check_divisible, scale_channels

DOWN_CONVS = (1, 2, 3, 3, 3)  # 5x5x5 convs per encoder stage, top to bottom (the paper's)
UP_CONVS = (3, 3, 2, 1)  # per decoder stage, bottom to top


def _conv5(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        Conv3d(in_channels, out_channels, kernel_size=5, padding=2),
        nn.InstanceNorm3d(out_channels, affine=True),
    )


class _ResidualStage(nn.Module):
    """``n`` 5x5x5 conv + norm (PReLU between them) whose output is added to the input."""

    def __init__(self, in_channels: int, channels: int, convs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(convs):
            if index:
                layers.append(nn.PReLU(channels))
            layers.append(_conv5(in_channels if index == 0 else channels, channels))
        self.convs = nn.Sequential(*layers)
        self.shortcut = (
            nn.Identity() if in_channels == channels else Conv3d(in_channels, channels, 1)
        )
        self.activation = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.convs(x) + self.shortcut(x))


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        Conv3d(in_channels, out_channels, kernel_size=2, stride=2),
        nn.InstanceNorm3d(out_channels, affine=True),
        nn.PReLU(out_channels),
    )


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2),
        nn.InstanceNorm3d(out_channels, affine=True),
        nn.PReLU(out_channels),
    )


class VNet(nn.Module):
    """Image -> per-voxel logits: residual 5x5x5 stages, strided-conv down, deconv up."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: float = 1.0,
        features: Sequence[int] = (16, 32, 64, 128, 256),
    ) -> None:
        super().__init__()
        if len(features) != len(DOWN_CONVS):
            raise ValueError(f"VNet needs {len(DOWN_CONVS)} stage widths, got {list(features)}")
        self.config = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            width=width,
            features=list(features),
        )
        channels = scale_channels(features, width)
        self.size_divisor = 2 ** (len(channels) - 1)
        self.encoder = nn.ModuleList([_ResidualStage(in_channels, channels[0], DOWN_CONVS[0])])
        self.downs = nn.ModuleList()
        for level in range(1, len(channels)):
            self.downs.append(_down(channels[level - 1], channels[level]))
            self.encoder.append(_ResidualStage(channels[level], channels[level], DOWN_CONVS[level]))
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        previous = channels[-1]
        for level, convs in zip(range(len(channels) - 2, -1, -1), UP_CONVS, strict=True):
            self.ups.append(_up(previous, channels[level]))
            previous = 2 * channels[level]
            self.decoder.append(_ResidualStage(previous, previous, convs))
        self.head = Conv3d(previous, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, self.size_divisor, type(self).__name__)
        skips = [self.encoder[0](x)]
        for down, stage in zip(self.downs, self.encoder[1:], strict=True):
            skips.append(stage(down(skips[-1])))
        x = skips.pop()
        for up, stage in zip(self.ups, self.decoder, strict=True):
            x = stage(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)
