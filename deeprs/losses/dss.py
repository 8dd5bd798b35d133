"""Deep structure sampling (DSS): scale each sample's displacement by alpha ~ U[0, 1]."""

from __future__ import annotations

import torch


def sample_dss_alpha(
    batch: int, generator: torch.Generator, device: torch.device | str
) -> torch.Tensor:
    """One perturbation factor per sample, drawn from ``generator`` (seeded, reproducible).

    Drawn on the generator's device, then moved, so a CPU generator works for CUDA runs.
    """
    return torch.rand(batch, generator=generator, device=generator.device).to(device)


def dss_scale(displacement: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``u * alpha`` per sample: alpha 0 gives the identity, alpha 1 the full displacement."""
    if alpha.dim() != 1 or alpha.shape[0] != displacement.shape[0]:
        raise ValueError(
            f"alpha must have one value per sample ({displacement.shape[0]}), "
            f"got shape {tuple(alpha.shape)}"
        )
    return displacement * alpha.to(displacement.dtype).view(-1, 1, 1, 1, 1)
