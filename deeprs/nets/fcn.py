"""3D FCN baseline: Long et al.'s fully convolutional network (FCN-8s) made 3D and compact."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deeprs.nets.blocks import Conv3d, ConvNormAct, DoubleConv, check_divisible, scale_channels


class FCN3D(nn.Module):
    """Image -> per-voxel logits through score maps fused across scales, no decoder path.

    A plain encoder (two conv + norm + PReLU per stage, max-pooling after each stage)
    ends in an FCN "fc" head (a 3x3x3 and a 1x1x1 conv) at 1/16 resolution. As in FCN-8s,
    1x1x1 score convs read the 1/16, 1/8 and 1/4 feature maps; the coarse score map is
    up-sampled and added to the next finer one, and the fused 1/4 score map is up-sampled to
    the input size. Up-sampling is fixed trilinear interpolation (FCN initialises its
    deconvolutions to bilinear; we keep them bilinear). Unlike the U-Net there are no
    feature skip connections into a decoder, only score-map fusion.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: float = 1.0,
        features: Sequence[int] = (16, 32, 64, 128),
    ) -> None:
        super().__init__()
        if len(features) < 3:
            raise ValueError(f"FCN3D needs at least three stages, got features={list(features)}")
        self.config = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            width=width,
            features=list(features),
        )
        channels = scale_channels(features, width)
        self.size_divisor = 2 ** len(channels)
        self.stages = nn.ModuleList()
        previous = in_channels
        for count in channels:
            self.stages.append(DoubleConv(previous, count))
            previous = count
        self.pool = nn.MaxPool3d(kernel_size=2)
        head_channels = 2 * channels[-1]
        self.head = nn.Sequential(
            ConvNormAct(channels[-1], head_channels),
            Conv3d(head_channels, head_channels, kernel_size=1),
            nn.LeakyReLU(0.01, inplace=True),
        )
        self.score_head = Conv3d(head_channels, out_channels, kernel_size=1)
        self.score_stage3 = Conv3d(channels[-2], out_channels, kernel_size=1)
        self.score_stage2 = Conv3d(channels[-3], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, self.size_divisor, type(self).__name__)
        size = x.shape[2:]
        pooled = []
        for stage in self.stages:
            x = self.pool(stage(x))
            pooled.append(x)
        score = self.score_head(self.head(pooled[-1]))
        for fine, score_conv in ((pooled[-2], self.score_stage3), (pooled[-3], self.score_stage2)):
            score = _upsample(score, fine.shape[2:]) + score_conv(fine)
        return _upsample(score, size)


def _upsample(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)
