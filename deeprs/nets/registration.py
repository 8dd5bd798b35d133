"""R: the VoxelMorph-2 registration network (Balakrishnan et al., CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deeprs.nets.blocks import Conv3d, he_init_, scale_channels
from deeprs.nets.spatial import integrate_velocity

ENCODER_LENGTH = 4
LEAKY_SLOPE = 0.2
DECODER_LENGTH = 7


class _ConvLeaky(nn.Sequential):
    """3x3x3 convolution + LeakyReLU(0.2), VoxelMorph's only building block (no norm)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        )


class VoxelMorph2(nn.Module):
    """Moving and fixed image stacked -> dense displacement in voxels, channels (d, h, w).

    Encoder: four stride-2 convolutions. Decoder (seven entries, VoxelMorph-2): three
    convolutions each followed by nearest up-sampling and concatenation with the encoder
    feature of that scale, two convolutions at half resolution, up-sampling and
    concatenation with the input, two more convolutions at full resolution, then a
    3-channel flow convolution drawn from N(0, 1e-5) with zero bias so that the network
    starts near the identity; the other convolutions are He-initialised (see
    :func:`deeprs.nets.blocks.he_init_`). With ``integration_steps = 0`` (the paper's
    VoxelMorph-2) that convolution's output is the displacement, which may fold; with
    ``integration_steps > 0`` it is a stationary velocity field and the displacement is its
    scaling-and-squaring integral (:func:`deeprs.nets.spatial.integrate_velocity`), as in
    VoxelMorph's diffeomorphic variant (there integrated at half resolution; here at full).
    Up-sampling goes to the exact size of the skip feature, so any input size works.
    """

    size_divisor = 1

    def __init__(
        self,
        width: float = 1.0,
        encoder: Sequence[int] = (16, 32, 32, 32),
        decoder: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        integration_steps: int = 0,
    ) -> None:
        super().__init__()
        if len(encoder) != ENCODER_LENGTH or len(decoder) != DECODER_LENGTH:
            raise ValueError(
                f"VoxelMorph-2 needs {ENCODER_LENGTH} encoder and {DECODER_LENGTH} decoder "
                f"widths, got {len(encoder)} and {len(decoder)}"
            )
        if integration_steps < 0:
            raise ValueError(f"integration_steps must be >= 0, got {integration_steps}")
        self.config = dict(
            width=width,
            encoder=list(encoder),
            decoder=list(decoder),
            integration_steps=integration_steps,
        )
        self.integration_steps = integration_steps
        enc = scale_channels(encoder, width)
        dec = scale_channels(decoder, width)
        self.levels = len(enc)

        self.encoder = nn.ModuleList()
        channels = 2
        for out_channels in enc:
            self.encoder.append(_ConvLeaky(channels, out_channels, stride=2))
            channels = out_channels

        # Up path: one conv per encoder scale below the top, then up-sample and concatenate.
        skip_channels = [2, *enc[:-1]]  # input, then encoder features from fine to coarse
        self.up_convs = nn.ModuleList()
        for step, out_channels in enumerate(dec[: self.levels - 1]):
            self.up_convs.append(_ConvLeaky(channels, out_channels))
            channels = out_channels + skip_channels[self.levels - 1 - step]
        self.half_res = nn.Sequential(_ConvLeaky(channels, dec[3]), _ConvLeaky(dec[3], dec[4]))
        channels = dec[4] + skip_channels[0]
        self.full_res = nn.Sequential(_ConvLeaky(channels, dec[5]), _ConvLeaky(dec[5], dec[6]))
        he_init_(self, LEAKY_SLOPE)
        self.flow = Conv3d(dec[6], 3, kernel_size=3, padding=1)
        nn.init.normal_(self.flow.weight, mean=0.0, std=1e-5)
        nn.init.zeros_(self.flow.bias)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = torch.cat([moving, fixed], dim=1)
        features = [x]
        for layer in self.encoder:
            features.append(layer(features[-1]))
        y = features[-1]
        for step, conv in enumerate(self.up_convs):
            skip = features[self.levels - 1 - step]
            y = F.interpolate(conv(y), size=skip.shape[2:], mode="nearest")
            y = torch.cat([y, skip], dim=1)
        y = self.half_res(y)
        y = F.interpolate(y, size=x.shape[2:], mode="nearest")
        y = self.full_res(torch.cat([y, x], dim=1))
        return integrate_velocity(self.flow(y), self.integration_steps)
