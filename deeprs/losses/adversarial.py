"""The adversarial game between R and the pixel-wise discriminator D (Fan et al. 2019).

D's outputs are logits; the sigmoid lives here as ``logsigmoid`` (stable for large logits
and under autocast), and in ``PixelDiscriminator.confidence`` for the ACM weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def adversarial_loss(disc_logits_warped: torch.Tensor) -> torch.Tensor:
    """R's loss: ``mean -log sigmoid(D(warped, fixed))`` (R wants D to call the pair aligned)."""
    return -F.logsigmoid(disc_logits_warped.float()).mean()


def discriminator_loss(
    disc_logits_reference: torch.Tensor, disc_logits_warped: torch.Tensor
) -> torch.Tensor:
    """Eq. 5: ``-log D(x_r, x_f) - log(1 - D(x_w, x_f))``, each term a mean over voxels.

    ``log(1 - sigmoid(z)) = logsigmoid(-z)``; the two means are added.
    """
    positive = -F.logsigmoid(disc_logits_reference.float()).mean()
    negative = -F.logsigmoid(-disc_logits_warped.float()).mean()
    return positive + negative


def reference_image(moving: torch.Tensor, fixed: torch.Tensor, beta: float) -> torch.Tensor:
    """The positive example ``beta * moving + (1 - beta) * fixed`` (Adv-Reg uses beta = 0.2)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    return beta * moving + (1.0 - beta) * fixed
