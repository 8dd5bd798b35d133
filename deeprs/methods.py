"""The method registry: every row of the paper's tables as a set of loss terms of the one trainer.

A :class:`MethodSpec` lists the loss terms (:mod:`deeprs.terms`) that train a method's
networks and its few constants; :mod:`deeprs.train` reads nothing else. Adding a method is
one declaration here, never a copy of the training loop. ``docs/methods.md`` explains each
choice. Torch-free: the Snakefile reads it while it builds the DAG.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from deeprs.errors import DeeprsError
from deeprs.terms import TERMS

SEGMENTATION_KINDS = ("unet3d", "fcn3d", "vnet")
SEGMENTATION_LOSSES = ("ce", "dice")


@dataclass(frozen=True)
class MethodSpec:
    """One method: the loss terms it trains with (:mod:`deeprs.terms`) and its constants.

    The networks follow from the terms: a method has R, S or D when one of its terms trains
    that network. ``term_weights`` multiplies the config's lambda of a term for this method
    (DeepAtlas weighs its anatomy and supervised terms as its paper does). ``dss`` samples
    R's augmentation displacements (eq. 4) for the S terms that use them.
    """

    name: str
    title: str
    paper: str
    terms: tuple[str, ...] = ()
    term_weights: dict[str, float] = field(default_factory=dict)
    segmentation_kind: str = "unet3d"
    segmentation_loss: str = "ce"
    dss: bool = False
    manual_augmentation: bool = False
    reference_beta: float = 0.2
    discriminator_lr_schedule: bool = False
    segmentation_pretrain_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.segmentation_kind not in SEGMENTATION_KINDS:
            raise ValueError(f"{self.name}: segmentation_kind must be one of {SEGMENTATION_KINDS}")
        if self.segmentation_loss not in SEGMENTATION_LOSSES:
            raise ValueError(f"{self.name}: segmentation_loss must be one of {SEGMENTATION_LOSSES}")
        unknown = [term for term in (*self.terms, *self.term_weights) if term not in TERMS]
        if unknown:
            raise ValueError(f"{self.name}: unknown loss terms {unknown}; see deeprs.terms")
        unused = set(self.term_weights) - set(self.terms)
        if unused:
            raise ValueError(f"{self.name}: term_weights for terms it does not use {unused}")
        for term in self.terms:
            missing = [net for net in TERMS[term].reads if net not in self.networks]
            if missing:
                raise ValueError(f"{self.name}: term {term} needs the {' and '.join(missing)}")
        if self.dss and not any(TERMS[term].uses_registration for term in self.terms):
            raise ValueError(f"{self.name}: DSS samples R's displacements for S's terms")

    @property
    def trains(self) -> bool:
        """False for Affine only: nothing to train."""
        return bool(self.terms)

    @property
    def networks(self) -> tuple[str, ...]:
        """Keys of the trained networks, as in ``model.pt``."""
        trained = {TERMS[term].network for term in self.terms}
        return tuple(
            key for key in ("registration", "segmentation", "discriminator") if key in trained
        )

    @property
    def registration(self) -> bool:
        return "registration" in self.networks

    @property
    def segmentation(self) -> bool:
        return "segmentation" in self.networks

    @property
    def discriminator(self) -> bool:
        return "discriminator" in self.networks

    @property
    def supervised_only(self) -> bool:
        """S trained on the labelled images alone (the segmentation baselines)."""
        return self.segmentation and not self.registration

    @property
    def labelled_fixed(self) -> bool:
        """Some term needs pairs of two labelled images (HybridCNN's label constraint)."""
        return any(TERMS[term].labelled_fixed for term in self.terms)

    def weight(self, term: str, weights: Mapping[str, float]) -> float:
        """The factor of ``term`` in its network's loss: the config's lambda times the method's."""
        key = TERMS[term].weight
        return (weights[key] if key is not None else 1.0) * self.term_weights.get(term, 1.0)


# R's regularity: the paper's smoothness and the folding penalty, whose weight is 0 unless a
# preset sets it (docs/methods.md, "Folding penalty").
_REGISTRATION_BASELINE = ("reg_smooth", "reg_fold")
_SEGMENTATION_BASELINE = ("seg_supervised",)


def _registration_baseline(
    name: str, title: str, paper: str, terms: tuple[str, ...], **constants: object
) -> MethodSpec:
    return MethodSpec(name, title, paper, terms=(*terms, *_REGISTRATION_BASELINE), **constants)


def _segmentation_baseline(name: str, title: str, paper: str, **constants: object) -> MethodSpec:
    return MethodSpec(name, title, paper, terms=_SEGMENTATION_BASELINE, **constants)


# DeepRS's registration side (eq. 3 without DRC): R, D, adversarial + NCC + smoothness.
_DEEPRS_R = ("reg_cc", *_REGISTRATION_BASELINE, "reg_adv", "disc")
# The direct joint model of Table 2: DeepRS's R plus S trained on R's augmentation data.
_DIRECT_JOINT = (*_DEEPRS_R, "seg_ce")

_DEEPRS_PAPER = "He et al. 2020, DeepRS (the paper this package implements)"


def _deeprs_row(name: str, title: str, terms: tuple[str, ...], dss: bool = False) -> MethodSpec:
    return MethodSpec(
        name, title, _DEEPRS_PAPER, terms=terms, dss=dss, discriminator_lr_schedule=True
    )


_DECLARATIONS = (
    MethodSpec("affine", "Affine only", "Elastix affine pre-alignment (preprocessing)"),
    _registration_baseline("voxelmorph2", "VoxelMorph-2", "Balakrishnan et al. 2018", ("reg_cc",)),
    _registration_baseline(
        "advreg",
        "Adv-Reg",
        "Fan et al. 2019",
        ("reg_adv", "disc"),
        reference_beta=0.2,
        discriminator_lr_schedule=True,
    ),
    _segmentation_baseline("unet3d", "3D U-Net", "Cicek et al. 2016"),
    _segmentation_baseline(
        "unet3d_aug", "3D U-Net-aug", "Cicek et al. 2016", manual_augmentation=True
    ),
    _segmentation_baseline("fcn3d", "3D FCN", "Long et al. 2015", segmentation_kind="fcn3d"),
    _segmentation_baseline("vnet", "V-Net", "Milletari et al. 2016", segmentation_kind="vnet"),
    MethodSpec(
        "deepatlas",
        "DeepAtlas",
        "Xu & Niethammer 2019",
        terms=("reg_cc", *_REGISTRATION_BASELINE, "reg_anatomy", "seg_weak", "seg_supervised"),
        term_weights={"reg_anatomy": 2.0, "seg_weak": 2.0, "seg_supervised": 3.0},
        segmentation_loss="dice",
        segmentation_pretrain_fraction=0.25,
    ),
    MethodSpec(
        "hybridcnn",
        "HybridCNN",
        "Li et al. 2019",
        terms=("reg_cc", *_REGISTRATION_BASELINE, "reg_label", "seg_weak", "seg_supervised"),
    ),
    _deeprs_row("deeprs", "DeepRS", (*_DIRECT_JOINT, "reg_drc", "seg_acm"), dss=True),
    _deeprs_row("ablation_r", "R", _DEEPRS_R),
    _deeprs_row("ablation_rs", "R+S", _DIRECT_JOINT),
    _deeprs_row("ablation_rs_dss", "R+S+DSS", _DIRECT_JOINT, dss=True),
    _deeprs_row("ablation_rs_acm", "R+S+ACM", (*_DIRECT_JOINT, "seg_acm")),
    _deeprs_row("ablation_rs_drc", "R+S+DRC", (*_DIRECT_JOINT, "reg_drc")),
)

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _DECLARATIONS}


def get_method(name: str) -> MethodSpec:
    """The declaration of ``name``; a DeeprsError lists the valid names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise DeeprsError(
            f"unknown method '{name}' (config keys 'methods', 'ablation' and "
            f"'label_amount_methods' take: {', '.join(METHODS)})"
        ) from None
