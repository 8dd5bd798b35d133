"""The method registry: every row of the paper's tables as switches of the one trainer.

A :class:`MethodSpec` says which networks a method has and which loss terms train them;
:mod:`deeprs.train.trainer` reads nothing else. Adding a method is one declaration here,
never a copy of the training loop. ``docs/methods.md`` explains each choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from deeprs.errors import DeeprsError

SEGMENTATION_KINDS = ("unet3d", "fcn3d", "vnet")
SEGMENTATION_LOSSES = ("ce", "dice")


@dataclass(frozen=True)
class MethodSpec:
    """The switches of one method.

    Registration (R) losses: ``adversarial`` (from D), ``drc`` (S frozen), ``similarity_ncc``,
    ``smoothness``, ``anatomy_dice`` (DeepAtlas: Dice of warped label vs the fixed label or
    S(fixed)) and ``label_constraint`` (HybridCNN: Dice of warped label vs the fixed label,
    only for pairs where both are labelled).
    Segmentation (S) losses: ``augmentation_data`` (CE on warped image vs warped label),
    ``acm`` (eq. 1, weighted by D's confidence), ``weak_supervision_unweighted`` (warped
    label as target for S(fixed), unweighted) and ``supervised`` (the labelled training
    images with their own labels, optionally with ``manual_augmentation``).
    """

    name: str
    title: str
    paper: str
    trains: bool = True
    registration: bool = False
    segmentation: bool = False
    segmentation_kind: str = "unet3d"
    discriminator: bool = False
    adversarial: bool = False
    similarity_ncc: bool = False
    smoothness: bool = False
    dss: bool = False
    acm: bool = False
    drc: bool = False
    weak_supervision_unweighted: bool = False
    anatomy_dice: bool = False
    label_constraint: bool = False
    augmentation_data: bool = False
    supervised: bool = False
    manual_augmentation: bool = False
    segmentation_loss: str = "ce"
    anatomy_weight: float = 1.0
    supervised_weight: float = 1.0
    reference_beta: float = 0.2
    discriminator_lr_schedule: bool = False
    segmentation_pretrain_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.segmentation_kind not in SEGMENTATION_KINDS:
            raise ValueError(f"{self.name}: segmentation_kind must be one of {SEGMENTATION_KINDS}")
        if self.segmentation_loss not in SEGMENTATION_LOSSES:
            raise ValueError(f"{self.name}: segmentation_loss must be one of {SEGMENTATION_LOSSES}")
        if (self.adversarial or self.acm) and not self.discriminator:
            raise ValueError(f"{self.name}: adversarial and ACM terms need the discriminator")
        if (self.drc or self.dss or self.augmentation_data or self.acm) and not (
            self.registration and self.segmentation
        ):
            raise ValueError(f"{self.name}: DSS, DRC, ACM and augmentation data need R and S")
        if self.discriminator and not self.registration:
            raise ValueError(f"{self.name}: the discriminator judges R's warps and needs R")

    @property
    def supervised_only(self) -> bool:
        """S trained on the labelled images alone (the segmentation baselines)."""
        return self.segmentation and not self.registration

    @property
    def networks(self) -> tuple[str, ...]:
        """Keys of the trained networks, as in ``model.pt``."""
        present = (
            ("registration", self.registration),
            ("segmentation", self.segmentation),
            ("discriminator", self.discriminator),
        )
        return tuple(key for key, has in present if has)


def _registration_baseline(name: str, title: str, paper: str, **switches: object) -> MethodSpec:
    return MethodSpec(name, title, paper, registration=True, smoothness=True, **switches)


def _segmentation_baseline(name: str, title: str, paper: str, **switches: object) -> MethodSpec:
    return MethodSpec(name, title, paper, segmentation=True, supervised=True, **switches)


# DeepRS's registration side (eq. 3 without DRC): R, D, adversarial + NCC + smoothness.
_DEEPRS_R = dict(
    registration=True,
    discriminator=True,
    adversarial=True,
    similarity_ncc=True,
    smoothness=True,
    discriminator_lr_schedule=True,
)
# The direct joint model of Table 2: DeepRS's R plus S trained on R's augmentation data.
_DIRECT_JOINT = dict(_DEEPRS_R, segmentation=True, augmentation_data=True)

_DEEPRS_PAPER = "He et al. 2020, DeepRS (the paper this package implements)"

_DECLARATIONS = (
    MethodSpec(
        "affine", "Affine only", "Elastix affine pre-alignment (preprocessing)", trains=False
    ),
    _registration_baseline(
        "voxelmorph2", "VoxelMorph-2", "Balakrishnan et al. 2018", similarity_ncc=True
    ),
    _registration_baseline(
        "advreg",
        "Adv-Reg",
        "Fan et al. 2019",
        discriminator=True,
        adversarial=True,
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
        registration=True,
        segmentation=True,
        similarity_ncc=True,
        smoothness=True,
        anatomy_dice=True,
        weak_supervision_unweighted=True,
        supervised=True,
        segmentation_loss="dice",
        anatomy_weight=2.0,
        supervised_weight=3.0,
        segmentation_pretrain_fraction=0.25,
    ),
    MethodSpec(
        "hybridcnn",
        "HybridCNN",
        "Li et al. 2019",
        registration=True,
        segmentation=True,
        similarity_ncc=True,
        smoothness=True,
        label_constraint=True,
        weak_supervision_unweighted=True,
        supervised=True,
    ),
    MethodSpec("deeprs", "DeepRS", _DEEPRS_PAPER, **_DIRECT_JOINT, dss=True, acm=True, drc=True),
    MethodSpec("ablation_r", "R", _DEEPRS_PAPER, **_DEEPRS_R),
    MethodSpec("ablation_rs", "R+S", _DEEPRS_PAPER, **_DIRECT_JOINT),
    MethodSpec("ablation_rs_dss", "R+S+DSS", _DEEPRS_PAPER, **_DIRECT_JOINT, dss=True),
    MethodSpec("ablation_rs_acm", "R+S+ACM", _DEEPRS_PAPER, **_DIRECT_JOINT, acm=True),
    MethodSpec("ablation_rs_drc", "R+S+DRC", _DEEPRS_PAPER, **_DIRECT_JOINT, drc=True),
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
