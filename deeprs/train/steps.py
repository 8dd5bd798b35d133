"""The three updates of one training iteration: R, then D, then S (section 3.2 of the paper).

Which loss terms each update computes is read from the :class:`MethodSpec`; a term that a
method lacks is never computed (no zero-weighted forward passes). Each step returns the
unweighted value of every term it computed, named as the columns of ``losses.csv``, and
refuses to apply an update whose loss is NaN or infinite.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from deeprs import losses
from deeprs.device import autocast
from deeprs.methods import MethodSpec
from deeprs.nets.spatial import one_hot, warp, warp_labels_onehot

FAN_SCHEDULE = ((0.6, 1.0), (0.4, 0.1), (0.2, 0.01))
"""Adv-Reg's discriminator learning-rate factors: (loss above, factor); below all: frozen."""


class NonFiniteLossError(RuntimeError):
    """A loss term is NaN or infinite; the update was not applied."""

    def __init__(self, term: str, value: float) -> None:
        super().__init__(f"loss term '{term}' is {value}")
        self.term = term
        self.value = value


@dataclass
class Networks:
    """The trained networks of a method (absent ones are None) and their optimisers."""

    registration: nn.Module | None
    segmentation: nn.Module | None
    discriminator: nn.Module | None
    optimizers: dict[str, torch.optim.Optimizer]


@dataclass
class Pair:
    """One training sample ``(1, 1, D, H, W)``; ``fixed_label`` only when the fixed image has one."""

    moving: torch.Tensor
    moving_label: torch.Tensor
    fixed: torch.Tensor
    fixed_label: torch.Tensor | None


@dataclass
class StepContext:
    """What every step needs besides the sample."""

    method: MethodSpec
    weights: dict[str, float]
    num_classes: int
    device: torch.device
    generator: torch.Generator
    base_lr: float
    """The discriminator's learning rate before Fan's schedule scales it."""
    cpu_bf16: bool = False


@contextlib.contextmanager
def frozen(*networks: nn.Module | None) -> Iterator[None]:
    """Let gradients flow through ``networks`` to their inputs without touching their weights."""
    parameters = [p for net in networks if net is not None for p in net.parameters()]
    previous = [p.requires_grad for p in parameters]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(parameters, previous, strict=True):
            parameter.requires_grad_(flag)


def _apply(
    optimizer: torch.optim.Optimizer, total: torch.Tensor, terms: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Check every term, then backpropagate ``total`` and step; return the terms as floats."""
    values = {name: float(term.detach()) for name, term in terms.items()}
    for name, value in values.items():
        if not torch.isfinite(torch.tensor(value)):
            raise NonFiniteLossError(name, value)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return values


def _overlap_loss(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss between two probability maps (DeepAtlas' anatomy, HybridCNN's labels).

    ``soft_dice_loss`` takes logits; the log of a map whose classes sum to one is a logit
    vector whose softmax is that map again.
    """
    return losses.soft_dice_loss(torch.log(probabilities.clamp_min(1e-6)), target)


def registration_step(
    context: StepContext, networks: Networks, pair: Pair
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Update R (S and D frozen). Returns the terms, the displacement and the warped image
    (both detached) for the D and S steps of the same iteration."""
    method, weights = context.method, context.weights
    registration = networks.registration
    assert registration is not None
    terms: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=context.device)
    with (
        frozen(networks.segmentation, networks.discriminator),
        autocast(context.device, context.cpu_bf16),
    ):
        displacement = registration(pair.moving, pair.fixed)
        warped = warp(pair.moving, displacement)
        if method.similarity_ncc:
            terms["reg_cc"] = losses.local_ncc_loss(warped, pair.fixed)
            total = total + weights["cc"] * terms["reg_cc"]
        if method.smoothness:
            terms["reg_smooth"] = losses.smoothness_loss(displacement)
            total = total + weights["smooth"] * terms["reg_smooth"]
        if method.adversarial:
            assert networks.discriminator is not None
            terms["reg_adv"] = losses.adversarial_loss(networks.discriminator(warped, pair.fixed))
            total = total + weights["adv"] * terms["reg_adv"]
        fixed_logits = None
        if method.drc or (method.anatomy_dice and pair.fixed_label is None):
            assert networks.segmentation is not None
            with torch.no_grad():
                fixed_logits = networks.segmentation(pair.fixed)
        if method.drc:
            assert networks.segmentation is not None and fixed_logits is not None
            terms["reg_drc"] = losses.drc_loss(networks.segmentation(warped), fixed_logits)
            total = total + weights["drc"] * terms["reg_drc"]
        if method.anatomy_dice or (method.label_constraint and pair.fixed_label is not None):
            warped_label = warp_labels_onehot(pair.moving_label, displacement, context.num_classes)
            if method.label_constraint and pair.fixed_label is not None:
                fixed_onehot = one_hot(pair.fixed_label, context.num_classes)
                terms["reg_label"] = _overlap_loss(warped_label, fixed_onehot)
                total = total + method.anatomy_weight * terms["reg_label"]
            if method.anatomy_dice:
                if pair.fixed_label is not None:
                    target = one_hot(pair.fixed_label, context.num_classes)
                else:
                    assert fixed_logits is not None
                    target = torch.softmax(fixed_logits.float(), dim=1)
                terms["reg_anatomy"] = _overlap_loss(warped_label, target)
                total = total + method.anatomy_weight * terms["reg_anatomy"]
    values = _apply(networks.optimizers["registration"], total, terms)
    return values, displacement.detach(), warped.detach()


def discriminator_lr_factor(loss: float) -> float:
    """Fan et al.'s schedule: the better D separates the pairs, the slower it learns."""
    for threshold, factor in FAN_SCHEDULE:
        if loss > threshold:
            return factor
    return 0.0


def discriminator_step(
    context: StepContext, networks: Networks, pair: Pair, warped: torch.Tensor
) -> dict[str, float]:
    """Update D with eq. 5: reference images as positives, the detached warp as negatives."""
    discriminator = networks.discriminator
    assert discriminator is not None
    reference = losses.reference_image(pair.moving, pair.fixed, context.method.reference_beta)
    with autocast(context.device, context.cpu_bf16):
        # One batched forward for both pairs (D has no normalisation layer: they stay independent).
        logits = discriminator(torch.cat([reference, warped]), torch.cat([pair.fixed, pair.fixed]))
        loss = losses.discriminator_loss(logits[:1], logits[1:])
    factor = 1.0
    if context.method.discriminator_lr_schedule:
        # Fan's thresholds are for binary cross-entropy averaged over the positive and the
        # negative examples (0.69 at chance); eq. 5 adds the two means, hence the half.
        factor = discriminator_lr_factor(float(loss.detach()) / 2)
    optimizer = networks.optimizers["discriminator"]
    for group in optimizer.param_groups:
        group["lr"] = context.base_lr * factor
    if factor == 0.0:
        values = {"disc": float(loss.detach())}
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLossError("disc", values["disc"])
    else:
        values = _apply(optimizer, loss, {"disc": loss})
    values["disc_lr_scale"] = factor
    return values


def _label_loss(method: MethodSpec, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if method.segmentation_loss == "dice":
        return losses.soft_dice_loss(logits, target)
    return losses.cross_entropy(logits, target)


def segmentation_step(
    context: StepContext,
    networks: Networks,
    pair: Pair,
    displacement: torch.Tensor | None,
) -> dict[str, float]:
    """Update S (R and D frozen: ``displacement`` is detached).

    Without a displacement (DeepAtlas' pre-training) only the supervised term is used.
    """
    method, weights = context.method, context.weights
    segmentation = networks.segmentation
    assert segmentation is not None
    inputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if displacement is not None and (method.augmentation_data or method.acm):
            sampled = displacement
            if method.dss:
                alpha = losses.sample_dss_alpha(1, context.generator, context.device)
                sampled = losses.dss_scale(displacement, alpha)
            warped_image = warp(pair.moving, sampled)
            warped_label = warp_labels_onehot(pair.moving_label, sampled, context.num_classes)
            if method.augmentation_data:
                inputs["warped"] = warped_image
        if displacement is not None and method.weak_supervision_unweighted:
            weak_label = warp_labels_onehot(pair.moving_label, displacement, context.num_classes)
        confidence = None
        if displacement is not None and method.acm:
            assert networks.discriminator is not None
            with autocast(context.device, context.cpu_bf16):
                confidence = networks.discriminator.confidence(warped_image, pair.fixed)
    if displacement is not None and (method.acm or method.weak_supervision_unweighted):
        inputs["fixed"] = pair.fixed
    if method.supervised:
        inputs["moving"] = pair.moving
    terms: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=context.device)
    with autocast(context.device, context.cpu_bf16):
        # One batched forward of every image S sees in this step.
        logits = dict(
            zip(inputs, segmentation(torch.cat(list(inputs.values()))).split(1), strict=True)
        )
        if "warped" in logits:
            terms["seg_ce"] = losses.cross_entropy(logits["warped"], warped_label)
            total = total + weights["ce"] * terms["seg_ce"]
        if confidence is not None:
            terms["seg_acm"] = losses.acm_loss(confidence, warped_label, logits["fixed"])
            total = total + weights["acm"] * terms["seg_acm"]
        if displacement is not None and method.weak_supervision_unweighted:
            terms["seg_weak"] = _label_loss(method, logits["fixed"], weak_label)
            total = total + method.anatomy_weight * terms["seg_weak"]
        if method.supervised:
            target = one_hot(pair.moving_label, context.num_classes)
            terms["seg_supervised"] = _label_loss(method, logits["moving"], target)
            total = total + method.supervised_weight * weights["ce"] * terms["seg_supervised"]
    return _apply(networks.optimizers["segmentation"], total, terms)
