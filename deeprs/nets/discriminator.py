"""D: the pixel-wise discriminator, a 3D U-Net judging (image, fixed) pairs voxel by voxel."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deeprs.nets.unet import UNet3D


class PixelDiscriminator(nn.Module):
    """(image, fixed) -> alignment logits ``(N, 1, D, H, W)``.

    ``forward`` returns logits, not probabilities: the losses apply ``logsigmoid`` (stable
    under autocast) and :meth:`confidence` gives the sigmoid map that weights the ACM loss.

    No normalisation layers by default: the cue D needs is how large the difference
    between image and fixed is, and instance (or batch-1 batch) normalisation rescales
    every feature map to unit variance, erasing it. On a toy case D with instance norm
    stayed at chance for 30 steps; without it, it separated the pairs.
    """

    def __init__(
        self,
        width: float = 1.0,
        features: Sequence[int] = (16, 32, 64, 128),
        norm: str = "none",
    ) -> None:
        super().__init__()
        self.config = dict(width=width, features=list(features), norm=norm)
        self.unet = UNet3D(2, 1, features=features, width=width, norm=norm)
        self.size_divisor = self.unet.size_divisor

    def forward(self, image: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat([image, fixed], dim=1))

    def confidence(self, image: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The alignment confidence map in [0, 1]: 1 where ``image`` looks aligned to ``fixed``."""
        return torch.sigmoid(self(image, fixed).float())
