"""Losses of the segmentation network S and the deep-based region constraint (DRC).

Logits are ``(N, K+1, D, H, W)`` (background first); targets are one-hot or soft class
probabilities of the same shape. Every loss is computed in float32, so that it stays
accurate under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.shape != target.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the "
            "same shape (N, K+1, D, H, W)"
        )


def cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy ``-sum_c t_c log softmax(logits)_c``, mean over voxels."""
    _check(logits, target_probs)
    log_probs = F.log_softmax(logits.float(), dim=1)
    return -(target_probs.float() * log_probs).sum(dim=1).mean()


def soft_dice_loss(
    logits: torch.Tensor, target_probs: torch.Tensor, smooth: float = 1e-5
) -> torch.Tensor:
    """``1 - mean Dice`` of softmax probabilities and targets.

    Dice is ``(2 sum p t + smooth) / (sum p + sum t + smooth)`` per sample and channel
    (background included); the loss averages it over samples and channels.
    """
    _check(logits, target_probs)
    probs = F.softmax(logits.float(), dim=1)
    target = target_probs.float()
    axes = (2, 3, 4)
    overlap = (probs * target).sum(dim=axes)
    total = probs.sum(dim=axes) + target.sum(dim=axes)
    return 1.0 - ((2.0 * overlap + smooth) / (total + smooth)).mean()


def acm_loss(
    confidence: torch.Tensor, warped_label_probs: torch.Tensor, fixed_logits: torch.Tensor
) -> torch.Tensor:
    """Eq. 1: cross-entropy of S(fixed) against the warped label, weighted by D's confidence.

    ``mean over voxels of -confidence * sum_c warped_label_c * log softmax(fixed_logits)_c``.
    ``confidence`` ``(N, 1, D, H, W)`` in [0, 1] is detached: it weights the loss of S and
    is never trained by it. Voxels with confidence 0 contribute nothing.
    """
    _check(fixed_logits, warped_label_probs)
    if confidence.shape[1] != 1 or confidence.shape[2:] != fixed_logits.shape[2:]:
        raise ValueError(
            f"confidence must be (N, 1, D, H, W) matching the logits, got {tuple(confidence.shape)}"
        )
    log_probs = F.log_softmax(fixed_logits.float(), dim=1)
    voxel_ce = -(warped_label_probs.float() * log_probs).sum(dim=1, keepdim=True)
    return (confidence.detach().float() * voxel_ce).mean()


def drc_loss(warped_logits: torch.Tensor, fixed_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 2: mean squared difference of S(warped) and S(fixed) softmax probabilities.

    One channel per structure plus one background channel for everything else, averaged
    over channels, voxels and samples. The paper prints a minus sign in front of the
    square; minimising that would push the segmentations apart, so it is dropped.
    Gradients flow into both arguments; R receives them through the warped image.
    """
    _check(warped_logits, fixed_logits)
    warped = F.softmax(warped_logits.float(), dim=1)
    fixed = F.softmax(fixed_logits.float(), dim=1)
    return (warped - fixed).pow(2).mean()
