"""The yardstick of ``deeprs bench``: one DeepRS iteration written plainly, as reference code is.

Written the way VoxelMorph's reference PyTorch code is written, so that ``deeprs bench``
can state our speed as a ratio to it:

* VoxelMorph-2 with stride-2 encoder convolutions and ``nn.Upsample(scale_factor=2)``,
  a 3D U-Net 16..128 (two conv + instance norm + PReLU per level) for S, the same
  U-Net without normalisation, two input channels and one output for D (the layers of
  :mod:`deeprs.nets`, so the same multiply-adds); float32, eager, contiguous
  (no channels_last), no autocast;
* local NCC as in voxelmorph's ``losses.NCC``: every windowed sum is one 9x9x9 convolution;
* every network is called once per image (``S(warped)`` and ``S(fixed)`` separately, D on
  the positive and the negative pair separately) and nothing is frozen: the backward pass
  also computes weight gradients of the networks whose optimiser does not step.

The mathematics is DeepRS's (eqs. 1-5, the same terms and weights as
:mod:`deeprs.train.steps`), so on the same networks and inputs these steps compute the
same loss values and the same gradients as ours; the tests check that. Warping uses
border padding as :func:`deeprs.nets.spatial.warp` does (voxelmorph pads with zeros),
so that the values agree.

With ``separable_ncc`` the same code is the second yardstick, ``plain-fp32``: the plain
fp32 eager step a user would write today, with the separable NCC, so that no ratio can
flatter us by beating only the 9x9x9 convolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from deeprs.losses.similarity import local_ncc_loss

NCC_WINDOW = 9
NCC_EPS = 1e-5
REFERENCE_BETA = 0.2


def ncc_loss(warped: torch.Tensor, fixed: torch.Tensor, window: int = NCC_WINDOW) -> torch.Tensor:
    """voxelmorph's ``NCC().loss``: five ``window``^3 box sums, each one 3-D convolution."""
    kernel = torch.ones(1, 1, window, window, window, device=warped.device, dtype=warped.dtype)
    padding = window // 2
    window_size = float(window**3)

    def box(volume: torch.Tensor) -> torch.Tensor:
        return F.conv3d(volume, kernel, padding=padding)

    sum_i, sum_j = box(warped), box(fixed)
    sum_ii, sum_jj = box(warped * warped), box(fixed * fixed)
    sum_ij = box(warped * fixed)
    mean_i, mean_j = sum_i / window_size, sum_j / window_size
    cross = sum_ij - mean_j * sum_i - mean_i * sum_j + mean_i * mean_j * window_size
    var_i = sum_ii - 2 * mean_i * sum_i + mean_i * mean_i * window_size
    var_j = sum_jj - 2 * mean_j * sum_j + mean_j * mean_j * window_size
    cc = cross * cross / (var_i * var_j + NCC_EPS)
    return -torch.mean(cc)


def gradient_l2_loss(flow: torch.Tensor) -> torch.Tensor:
    """voxelmorph's ``Grad('l2')``: mean squared forward difference per axis, averaged."""
    dz = flow[:, :, 1:, :, :] - flow[:, :, :-1, :, :]
    dy = flow[:, :, :, 1:, :] - flow[:, :, :, :-1, :]
    dx = flow[:, :, :, :, 1:] - flow[:, :, :, :, :-1]
    return (torch.mean(dz * dz) + torch.mean(dy * dy) + torch.mean(dx * dx)) / 3.0


class SpatialTransformer(nn.Module):
    """voxelmorph's transformer: a stored identity grid plus the flow, normalised to [-1, 1]."""

    def __init__(self, size: tuple[int, int, int], mode: str = "bilinear") -> None:
        super().__init__()
        self.mode = mode
        vectors = [torch.arange(0, s, dtype=torch.float32) for s in size]
        grid = torch.stack(torch.meshgrid(vectors, indexing="ij")).unsqueeze(0)
        self.register_buffer("grid", grid, persistent=False)

    def forward(self, source: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        locations = self.grid + flow
        shape = flow.shape[2:]
        channels = [2 * (locations[:, i] / (shape[i] - 1) - 0.5) for i in range(len(shape))]
        locations = torch.stack(channels, dim=-1)[..., [2, 1, 0]]
        return F.grid_sample(
            source, locations, align_corners=True, mode=self.mode, padding_mode="border"
        )


def _conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1), nn.LeakyReLU(0.2)
    )


def _scaled(channels: tuple[int, ...], width: float) -> list[int]:
    return [max(4, round(count * width)) for count in channels]


class ReferenceVoxelMorph2(nn.Module):
    """VoxelMorph-2 (encoder 16,32,32,32; decoder 32,32,32,32,32,16,16) as in its 2018 code."""

    def __init__(self, size: tuple[int, int, int], width: float = 1.0) -> None:
        super().__init__()
        enc = _scaled((16, 32, 32, 32), width)
        dec = _scaled((32, 32, 32, 32, 32, 16, 16), width)
        self.enc = nn.ModuleList()
        previous = 2
        for channels in enc:
            self.enc.append(_conv_block(previous, channels, stride=2))
            previous = channels
        skips = [enc[2], enc[1], enc[0]]
        self.dec = nn.ModuleList()
        for index in range(3):
            self.dec.append(_conv_block(previous, dec[index]))
            previous = dec[index] + skips[index]
        self.dec.append(_conv_block(previous, dec[3]))
        self.dec.append(_conv_block(dec[3], dec[4]))
        self.vm2_conv = _conv_block(dec[4] + 2, dec[5])
        self.dec.append(_conv_block(dec[5], dec[6]))
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.flow = nn.Conv3d(dec[6], 3, kernel_size=3, padding=1)
        nn.init.normal_(self.flow.weight, mean=0.0, std=1e-5)
        nn.init.zeros_(self.flow.bias)
        self.transformer = SpatialTransformer(size)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = torch.cat([moving, fixed], dim=1)
        x_enc = [x]
        for layer in self.enc:
            x_enc.append(layer(x_enc[-1]))
        y = x_enc[-1]
        for index in range(3):
            y = self.upsample(self.dec[index](y))
            y = torch.cat([y, x_enc[-(index + 2)]], dim=1)
        y = self.dec[4](self.dec[3](y))
        y = torch.cat([self.upsample(y), x], dim=1)
        y = self.dec[5](self.vm2_conv(y))
        return self.flow(y)


class ReferenceUNet3D(nn.Module):
    """3D U-Net (Cicek et al.) with levels 16, 32, 64, 128 times ``width``.

    Instance normalisation after each convolution unless ``norm`` is False (D has none).
    """

    def __init__(
        self, in_channels: int, out_channels: int, width: float = 1.0, norm: bool = True
    ) -> None:
        super().__init__()
        levels = _scaled((16, 32, 64, 128), width)

        def double(a: int, b: int) -> nn.Sequential:
            def normalise(channels: int) -> nn.Module:
                return nn.InstanceNorm3d(channels, affine=True) if norm else nn.Identity()

            return nn.Sequential(
                nn.Conv3d(a, b, 3, padding=1),
                normalise(b),
                nn.PReLU(b),
                nn.Conv3d(b, b, 3, padding=1),
                normalise(b),
                nn.PReLU(b),
            )

        self.encoders = nn.ModuleList()
        previous = in_channels
        for channels in levels:
            self.encoders.append(double(previous, channels))
            previous = channels
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for channels in reversed(levels[:-1]):
            self.ups.append(nn.ConvTranspose3d(previous, channels, 2, stride=2))
            self.decoders.append(double(2 * channels, channels))
            previous = channels
        self.head = nn.Conv3d(previous, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, encoder in enumerate(self.encoders):
            x = encoder(x if index == 0 else F.max_pool3d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, decoder in zip(self.ups, self.decoders, strict=True):
            x = decoder(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


class ReferenceDiscriminator(nn.Module):
    """D: the U-Net without normalisation on (image, fixed), one logit per voxel."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.unet = ReferenceUNet3D(2, 1, width, norm=False)

    def forward(self, image: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat([image, fixed], dim=1))


@dataclass
class ReferenceModel:
    """R, S, D, their optimisers (RMSprop for R and D, Adam for S) and the transformer."""

    registration: nn.Module
    segmentation: nn.Module
    discriminator: nn.Module
    transformer: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    num_classes: int
    weights: dict[str, float]
    ncc: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(default=ncc_loss)
    """The NCC of eq. 3: voxelmorph's one-convolution form, or the separable one (``plain``)."""


def build_reference(
    size_zyx: tuple[int, int, int],
    num_classes: int,
    width: float,
    device: torch.device,
    weights: dict[str, float],
    lr: float = 2e-4,
    networks: tuple[nn.Module, nn.Module, nn.Module] | None = None,
    separable_ncc: bool = False,
) -> ReferenceModel:
    """The reference model; ``networks`` (R, S, D) replaces the reference networks (tests).

    ``separable_ncc`` gives the second yardstick, the plain fp32 eager step with the NCC a
    user would write today (three 1-D box passes, :func:`deeprs.losses.local_ncc_loss`).
    """
    if networks is None:
        networks = (
            ReferenceVoxelMorph2(size_zyx, width),
            ReferenceUNet3D(1, num_classes, width),
            ReferenceDiscriminator(width),
        )
    registration, segmentation, discriminator = (net.to(device).train() for net in networks)
    return ReferenceModel(
        registration=registration,
        segmentation=segmentation,
        discriminator=discriminator,
        transformer=SpatialTransformer(size_zyx).to(device),
        optimizers={
            "registration": torch.optim.RMSprop(registration.parameters(), lr=lr, alpha=0.9),
            "segmentation": torch.optim.Adam(segmentation.parameters(), lr=lr),
            "discriminator": torch.optim.RMSprop(discriminator.parameters(), lr=lr, alpha=0.9),
        },
        num_classes=num_classes,
        weights=dict(weights),
        ncc=local_ncc_loss if separable_ncc else ncc_loss,
    )


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels[:, 0].long(), num_classes).permute(0, 4, 1, 2, 3).float()


def registration_step(
    model: ReferenceModel, moving: torch.Tensor, fixed: torch.Tensor
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Eq. 3: adv + drc + cc + smoothness; only R's optimiser steps."""
    weights = model.weights
    flow = model.registration(moving, fixed)
    warped = model.transformer(moving, flow)
    cc = model.ncc(warped, fixed)
    smooth = gradient_l2_loss(flow)
    disc_logits = model.discriminator(warped, fixed)
    adv = F.binary_cross_entropy_with_logits(disc_logits, torch.ones_like(disc_logits))
    warped_probs = F.softmax(model.segmentation(warped), dim=1)
    fixed_probs = F.softmax(model.segmentation(fixed), dim=1)
    drc = F.mse_loss(warped_probs, fixed_probs)
    total = weights["adv"] * adv + weights["drc"] * drc + weights["cc"] * cc
    total = total + weights["smooth"] * smooth
    optimizer = model.optimizers["registration"]
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    terms = {"reg_cc": cc, "reg_smooth": smooth, "reg_adv": adv, "reg_drc": drc}
    return {name: term.item() for name, term in terms.items()}, flow.detach(), warped.detach()


def discriminator_step(
    model: ReferenceModel, moving: torch.Tensor, fixed: torch.Tensor, warped: torch.Tensor
) -> dict[str, float]:
    """Eq. 5: (beta*moving + (1-beta)*fixed, fixed) positive, (warped, fixed) negative."""
    reference = REFERENCE_BETA * moving + (1 - REFERENCE_BETA) * fixed
    positive = model.discriminator(reference, fixed)
    negative = model.discriminator(warped, fixed)
    loss = F.binary_cross_entropy_with_logits(
        positive, torch.ones_like(positive)
    ) + F.binary_cross_entropy_with_logits(negative, torch.zeros_like(negative))
    optimizer = model.optimizers["discriminator"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {"disc": loss.item()}


def segmentation_step(
    model: ReferenceModel,
    moving: torch.Tensor,
    moving_label: torch.Tensor,
    fixed: torch.Tensor,
    flow: torch.Tensor,
    alpha: float,
) -> dict[str, float]:
    """Eq. 4: ACM (eq. 1) + cross-entropy on DSS-scaled augmentation data."""
    sampled = flow * alpha
    warped_image = model.transformer(moving, sampled)
    warped_label = model.transformer(_one_hot(moving_label, model.num_classes), sampled)
    confidence = torch.sigmoid(model.discriminator(warped_image, fixed)).detach()
    log_probs_warped = F.log_softmax(model.segmentation(warped_image), dim=1)
    log_probs_fixed = F.log_softmax(model.segmentation(fixed), dim=1)
    ce = -(warped_label * log_probs_warped).sum(dim=1).mean()
    acm = (confidence * -(warped_label * log_probs_fixed).sum(dim=1, keepdim=True)).mean()
    total = model.weights["acm"] * acm + model.weights["ce"] * ce
    optimizer = model.optimizers["segmentation"]
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    return {"seg_ce": ce.item(), "seg_acm": acm.item()}


def joint_iteration(
    model: ReferenceModel,
    moving: torch.Tensor,
    moving_label: torch.Tensor,
    fixed: torch.Tensor,
    generator: torch.Generator,
) -> dict[str, float]:
    """R, then D on R's warp, then S on R's displacement scaled by alpha ~ U[0, 1]."""
    values, flow, warped = registration_step(model, moving, fixed)
    values.update(discriminator_step(model, moving, fixed, warped))
    alpha = float(torch.rand(1, generator=generator))
    values.update(segmentation_step(model, moving, moving_label, fixed, flow, alpha))
    return values
