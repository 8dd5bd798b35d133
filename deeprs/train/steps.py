"""The three updates of one training iteration: R, then D, then S (section 3.2 of the paper).

Each update sums the method's loss terms of its network (:mod:`deeprs.terms`), each times
its weight; a term that a method lacks, or whose weight is 0, is never computed (no
zero-weighted forward passes). The inputs the terms share (warped labels, S's prediction on the fixed image,
D's confidence) are computed once per step, when a term first reads them. Each step
returns the unweighted value of every term it computed, named as the columns of
``losses.csv``, and refuses to apply an update whose loss is NaN or infinite.

:func:`joint_step` is one iteration of a method with R. It runs S's one batched forward
right after R's forward, so that R's constant target on the fixed image (DRC, DeepAtlas'
anatomy) is S's own logits of that iteration instead of a second S pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from deeprs import losses
from deeprs.device import autocast
from deeprs.methods import MethodSpec
from deeprs.nets.spatial import one_hot, warp, warp_labels_onehot
from deeprs.terms import SEGMENTATION_INPUTS, LossTerm, terms_of

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
    """``train.weights``: the config's lambda per weight key of :mod:`deeprs.terms`."""
    num_classes: int
    device: torch.device
    generator: torch.Generator
    discriminator_lr: float
    """D's learning rate before Fan's schedule scales it."""
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


@contextlib.contextmanager
def _constant(device: torch.device) -> Iterator[None]:
    """No gradient and full precision: S's targets are fixed float32 maps."""
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        yield


def _weighted_sum(
    context: StepContext, active: list[LossTerm], inputs: object
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Compute the ``active`` terms; their weighted sum and each term's value.

    A term whose weight is 0 is not computed: it could change nothing but the time.
    """
    terms: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=context.device)
    for term in active:
        weight = context.method.weight(term.name, context.weights)
        if weight == 0:
            continue
        value = term.compute(inputs)
        if value is None:
            continue
        terms[term.name] = value
        total = total + weight * value
    return total, terms


def _apply(
    optimizer: torch.optim.Optimizer, total: torch.Tensor, terms: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Check every term, then backpropagate ``total`` and step; return the terms as floats."""
    values = {name: float(term.detach()) for name, term in terms.items()}
    for name, value in values.items():
        if not torch.isfinite(torch.tensor(value)):
            raise NonFiniteLossError(name, value)
    if total.requires_grad:  # every term of the network weighted 0: nothing to learn
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return values


@dataclass
class RegistrationInputs:
    """What R's terms read: the pair, R's displacement and warp, and what they share."""

    context: StepContext
    networks: Networks
    pair: Pair
    displacement: torch.Tensor
    warped: torch.Tensor
    segmented_fixed: torch.Tensor | None = None
    """S's logits on the fixed image from this iteration's S forward, when it has one."""

    @cached_property
    def fixed_logits(self) -> torch.Tensor:
        """S's prediction on the fixed image, a constant target (DRC, DeepAtlas' anatomy).

        S's weights do not change between the R and S updates of one iteration, so S's
        own forward on the fixed image serves, detached; without one S runs here.
        """
        if self.segmented_fixed is not None:
            return self.segmented_fixed.detach()
        assert self.networks.segmentation is not None
        with torch.no_grad():
            return self.networks.segmentation(self.pair.fixed)

    @cached_property
    def warped_label(self) -> torch.Tensor:
        """The moving label warped by R, as class probabilities (differentiable in R)."""
        return warp_labels_onehot(
            self.pair.moving_label, self.displacement, self.context.num_classes
        )

    @cached_property
    def fixed_label_onehot(self) -> torch.Tensor:
        assert self.pair.fixed_label is not None
        return one_hot(self.pair.fixed_label, self.context.num_classes)

    @cached_property
    def fixed_anatomy(self) -> torch.Tensor:
        """The fixed image's label, or S's softmax where the fixed image has none."""
        if self.pair.fixed_label is not None:
            return self.fixed_label_onehot
        return torch.softmax(self.fixed_logits.float(), dim=1)


@dataclass
class Registered:
    """R's forward on a pair: the displacement and the warped moving image (with R's graph)."""

    displacement: torch.Tensor
    warped: torch.Tensor


def registration_forward(context: StepContext, networks: Networks, pair: Pair) -> Registered:
    registration = networks.registration
    assert registration is not None
    with autocast(context.device, context.cpu_bf16):
        displacement = registration(pair.moving, pair.fixed)
        return Registered(displacement, warp(pair.moving, displacement))


def registration_update(
    context: StepContext,
    networks: Networks,
    pair: Pair,
    registered: Registered,
    segmented_fixed: torch.Tensor | None = None,
) -> dict[str, float]:
    """Update R from its forward (S and D frozen); ``segmented_fixed`` as in
    :class:`RegistrationInputs`."""
    with (
        frozen(networks.segmentation, networks.discriminator),
        autocast(context.device, context.cpu_bf16),
    ):
        inputs = RegistrationInputs(
            context, networks, pair, registered.displacement, registered.warped, segmented_fixed
        )
        active = terms_of("registration", context.method.terms)
        total, terms = _weighted_sum(context, active, inputs)
    return _apply(networks.optimizers["registration"], total, terms)


def registration_step(
    context: StepContext, networks: Networks, pair: Pair
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Update R (S and D frozen). Returns the terms, the displacement and the warped image
    (both detached) for the D and S steps of the same iteration."""
    registered = registration_forward(context, networks, pair)
    values = registration_update(context, networks, pair, registered)
    return values, registered.displacement.detach(), registered.warped.detach()


def discriminator_lr_factor(loss: float) -> float:
    """Fan et al.'s schedule: the better D separates the pairs, the slower it learns."""
    for threshold, factor in FAN_SCHEDULE:
        if loss > threshold:
            return factor
    return 0.0


@dataclass
class DiscriminatorInputs:
    """D's logits on the reference pair (first) and on R's warp (second)."""

    logits: torch.Tensor


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
        (term,) = terms_of("discriminator", context.method.terms)
        loss = term.compute(DiscriminatorInputs(logits))
    assert loss is not None
    factor = 1.0
    if context.method.discriminator_lr_schedule:
        # Fan's thresholds are for binary cross-entropy averaged over the positive and the
        # negative examples (0.69 at chance); eq. 5 adds the two means, hence the half.
        factor = discriminator_lr_factor(float(loss.detach()) / 2)
    optimizer = networks.optimizers["discriminator"]
    for group in optimizer.param_groups:
        group["lr"] = context.discriminator_lr * factor
    if factor == 0.0:
        values = {term.name: float(loss.detach())}
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLossError(term.name, values[term.name])
    else:
        values = _apply(optimizer, loss, {term.name: loss})
    values["disc_lr_scale"] = factor
    return values


@dataclass
class SegmentationInputs:
    """What S's terms read: the pair, R's detached displacement and S's logits per image.

    The targets (warped images and labels, D's confidence) are computed once, on first use,
    without gradient and in float32 (D's confidence under the step's autocast).
    """

    context: StepContext
    networks: Networks
    pair: Pair
    displacement: torch.Tensor | None
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    active: list[LossTerm] = field(default_factory=list)
    """The S terms this step computes."""

    @cached_property
    def sampled_displacement(self) -> torch.Tensor:
        """R's displacement, scaled by a DSS draw (eq. 4) when the method uses DSS."""
        assert self.displacement is not None
        if not self.context.method.dss:
            return self.displacement
        with _constant(self.context.device):
            alpha = losses.sample_dss_alpha(1, self.context.generator, self.context.device)
            return losses.dss_scale(self.displacement, alpha)

    @cached_property
    def warped_image(self) -> torch.Tensor:
        """The augmentation image: the moving image under the sampled displacement."""
        with _constant(self.context.device):
            return warp(self.pair.moving, self.sampled_displacement)

    @cached_property
    def warped_label(self) -> torch.Tensor:
        """Its label, as class probabilities."""
        with _constant(self.context.device):
            return warp_labels_onehot(
                self.pair.moving_label, self.sampled_displacement, self.context.num_classes
            )

    @cached_property
    def weak_label(self) -> torch.Tensor:
        """The moving label under R's own displacement: a weak label of the fixed image."""
        assert self.displacement is not None
        with _constant(self.context.device):
            return warp_labels_onehot(
                self.pair.moving_label, self.displacement, self.context.num_classes
            )

    @cached_property
    def confidence(self) -> torch.Tensor:
        """D's per-voxel confidence that the augmentation image is well registered."""
        assert self.networks.discriminator is not None
        with torch.no_grad(), autocast(self.context.device, self.context.cpu_bf16):
            return self.networks.discriminator.confidence(self.warped_image, self.pair.fixed)

    @cached_property
    def moving_label_onehot(self) -> torch.Tensor:
        return one_hot(self.pair.moving_label, self.context.num_classes)

    def image(self, role: str) -> torch.Tensor:
        """The image S segments for ``role`` (a ``segmentation_input`` of the terms)."""
        return self.warped_image if role == "warped" else getattr(self.pair, role)


def segmentation_forward(
    context: StepContext,
    networks: Networks,
    pair: Pair,
    displacement: torch.Tensor | None,
) -> SegmentationInputs:
    """S's logits (with graph) on every image its active terms segment, in one batched call.

    Without a displacement (DeepAtlas' pre-training, the segmentation baselines) only the
    terms that do not use R are active.
    """
    segmentation = networks.segmentation
    assert segmentation is not None
    active = [
        term
        for term in terms_of("segmentation", context.method.terms)
        if displacement is not None or not term.uses_registration
    ]
    inputs = SegmentationInputs(context, networks, pair, displacement, active=active)
    roles = {term.segmentation_input for term in active}
    images = {role: inputs.image(role) for role in SEGMENTATION_INPUTS if role in roles}
    with autocast(context.device, context.cpu_bf16):
        batch = segmentation(torch.cat(list(images.values())))
    inputs.logits = dict(zip(images, batch.split(1), strict=True))
    return inputs


def segmentation_update(
    context: StepContext, networks: Networks, inputs: SegmentationInputs
) -> dict[str, float]:
    """Update S from its forward (R and D frozen: the displacement is detached)."""
    with autocast(context.device, context.cpu_bf16):
        total, terms = _weighted_sum(context, inputs.active, inputs)
    return _apply(networks.optimizers["segmentation"], total, terms)


def segmentation_step(
    context: StepContext,
    networks: Networks,
    pair: Pair,
    displacement: torch.Tensor | None,
) -> dict[str, float]:
    """Update S (R and D frozen: ``displacement`` is detached)."""
    return segmentation_update(
        context, networks, segmentation_forward(context, networks, pair, displacement)
    )


def joint_step(
    context: StepContext,
    networks: Networks,
    pair: Pair,
    update_registration: bool = True,
    update_segmentation: bool = True,
) -> dict[str, float]:
    """One iteration of a method with R: update R, then D, then S (section 3.2).

    S's forward runs once, right after R's: S's weights do not change before its own
    update, so its logits on the fixed image also serve as R's constant DRC or anatomy
    target (no second S pass on that image). Returns every computed term.
    """
    segments = update_segmentation and context.method.segmentation
    if not update_registration:
        return segmentation_step(context, networks, pair, None) if segments else {}
    registered = registration_forward(context, networks, pair)
    displacement = registered.displacement.detach().float()
    segmented = segmentation_forward(context, networks, pair, displacement) if segments else None
    row = registration_update(
        context,
        networks,
        pair,
        registered,
        segmented.logits.get("fixed") if segmented is not None else None,
    )
    if context.method.discriminator:
        row.update(discriminator_step(context, networks, pair, registered.warped.detach()))
    if segmented is not None:
        row.update(segmentation_update(context, networks, segmented))
    return row
