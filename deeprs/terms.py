"""The loss terms: one declaration per term, read by the methods, the steps, the history
and the report.

A :class:`LossTerm` says which network the term trains, which ``train.weights`` key (the
paper's lambda) scales it, how it is computed and how plots and tables title it. A method
(:mod:`deeprs.methods`) lists the terms it uses; each training step sums the weighted
terms of its network in the order of :data:`TERMS`; ``losses.csv`` has one column per
term. The defaults of the weights live in ``workflow/schemas/config.schema.yaml``
(``train.weights``), one key per weight named here.

This module imports no torch at import time (the Snakefile reads the method registry,
which reads this one); the compute functions import the losses when they first run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

NETWORKS = ("registration", "discriminator", "segmentation")
"""The three networks, in the order one iteration updates them (R, D, S)."""


@dataclass(frozen=True)
class LossTerm:
    """One loss term.

    ``compute(inputs)`` gets the step's inputs (:mod:`deeprs.train.steps`: the pair, R's
    output, S's logits per input) and returns the unweighted scalar, or None where the term
    does not apply to this sample (a constraint that needs a label the fixed image lacks).
    """

    name: str
    """Column of ``losses.csv``."""
    network: str
    """The network this term trains (its gradient updates only that one)."""
    weight: str | None
    """Key of ``train.weights`` that scales it; None for D's loss, its network's only term."""
    title: str
    """Plot and table title."""
    compute: Callable[[Any], torch.Tensor | None]
    reads: tuple[str, ...] = ()
    """Other networks whose outputs the term needs (they must be trained by the method too)."""
    segmentation_input: str | None = None
    """For S terms: which image S segments for it (``warped``, ``fixed`` or ``moving``)."""
    uses_registration: bool = False
    """For S terms: needs R's displacement of this iteration (skipped while R pre-trains)."""
    labelled_fixed: bool = False
    """Needs pairs of two labelled images: the labelled images are also used as fixed ones."""


def _losses() -> Any:
    from deeprs import losses

    return losses


def _overlap_loss(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss between two probability maps (DeepAtlas' anatomy, HybridCNN's labels).

    ``soft_dice_loss`` takes logits; the log of a map whose classes sum to one is a logit
    vector whose softmax is that map again.
    """
    return _losses().soft_dice_loss(probabilities.clamp_min(1e-6).log(), target)


def _label_loss(inputs: Any, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The method's segmentation loss against a (soft) label: cross-entropy or soft Dice."""
    if inputs.context.method.segmentation_loss == "dice":
        return _losses().soft_dice_loss(logits, target)
    return _losses().cross_entropy(logits, target)


def _registration_label_constraint(inputs: Any) -> torch.Tensor | None:
    if inputs.pair.fixed_label is None:
        return None
    return _overlap_loss(inputs.warped_label, inputs.fixed_label_onehot)


def _registration_anatomy(inputs: Any) -> torch.Tensor:
    return _overlap_loss(inputs.warped_label, inputs.fixed_anatomy)


_TERM_LIST = (
    # R (S and D frozen), in the order the registration step computes them.
    LossTerm(
        "reg_cc",
        "registration",
        "cc",
        "R: local NCC",
        lambda r: _losses().local_ncc_loss(r.warped, r.pair.fixed),
    ),
    LossTerm(
        "reg_smooth",
        "registration",
        "smooth",
        "R: smoothness",
        lambda r: _losses().smoothness_loss(r.displacement),
    ),
    LossTerm(
        "reg_fold",
        "registration",
        "fold",
        "R: folding penalty",
        lambda r: _losses().folding_loss(r.displacement),
    ),
    LossTerm(
        "reg_adv",
        "registration",
        "adv",
        "R: adversarial (from D)",
        lambda r: _losses().adversarial_loss(r.networks.discriminator(r.warped, r.pair.fixed)),
        reads=("discriminator",),
    ),
    LossTerm(
        "reg_drc",
        "registration",
        "drc",
        "R: DRC (eq. 2)",
        lambda r: _losses().drc_loss(r.networks.segmentation(r.warped), r.fixed_logits),
        reads=("segmentation",),
    ),
    LossTerm(
        "reg_label",
        "registration",
        "label",
        "R: label constraint (HybridCNN)",
        _registration_label_constraint,
        labelled_fixed=True,
    ),
    LossTerm(
        "reg_anatomy",
        "registration",
        "anatomy",
        "R: anatomy Dice (DeepAtlas)",
        _registration_anatomy,
        reads=("segmentation",),
    ),
    # D (eq. 5): reference pairs as positives, R's detached warp as negatives.
    LossTerm(
        "disc",
        "discriminator",
        None,
        "D: eq. 5",
        lambda d: _losses().discriminator_loss(d.logits[:1], d.logits[1:]),
        reads=("registration",),
    ),
    # S (R and D frozen), in the order the segmentation step computes them.
    LossTerm(
        "seg_ce",
        "segmentation",
        "ce",
        "S: CE on augmentation data",
        lambda s: _losses().cross_entropy(s.logits["warped"], s.warped_label),
        reads=("registration",),
        segmentation_input="warped",
        uses_registration=True,
    ),
    LossTerm(
        "seg_acm",
        "segmentation",
        "acm",
        "S: ACM (eq. 1)",
        lambda s: _losses().acm_loss(s.confidence, s.warped_label, s.logits["fixed"]),
        reads=("registration", "discriminator"),
        segmentation_input="fixed",
        uses_registration=True,
    ),
    LossTerm(
        "seg_weak",
        "segmentation",
        "weak",
        "S: weak supervision by R's warped labels",
        lambda s: _label_loss(s, s.logits["fixed"], s.weak_label),
        reads=("registration",),
        segmentation_input="fixed",
        uses_registration=True,
    ),
    LossTerm(
        "seg_supervised",
        "segmentation",
        "supervised",
        "S: supervised on labelled images",
        lambda s: _label_loss(s, s.logits["moving"], s.moving_label_onehot),
        segmentation_input="moving",
    ),
)

TERMS: dict[str, LossTerm] = {term.name: term for term in _TERM_LIST}
"""Every loss term by name, in the order the steps compute and sum them."""

TERM_TITLES: dict[str, str] = {name: term.title for name, term in TERMS.items()}
"""Column of ``losses.csv`` -> plot title."""

WEIGHT_KEYS: tuple[str, ...] = tuple(t.weight for t in _TERM_LIST if t.weight is not None)
"""The keys of ``train.weights`` (defaults in the config schema)."""

SEGMENTATION_INPUTS = ("warped", "fixed", "moving")
"""The images S may see in one step, in the order of its one batched forward."""


def terms_of(network: str, names: tuple[str, ...]) -> list[LossTerm]:
    """The terms among ``names`` that train ``network``, in registry order."""
    return [term for term in _TERM_LIST if term.network == network and term.name in names]
