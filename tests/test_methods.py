"""The method registry: each row of the paper's tables maps to the intended loss terms."""

from __future__ import annotations

import pytest

from deeprs.config import load_schema
from deeprs.errors import DeeprsError
from deeprs.methods import METHODS, MethodSpec, get_method
from deeprs.terms import WEIGHT_KEYS

# The loss terms of each row of the paper's tables; every R also carries the folding
# penalty, whose weight is 0 (the paper's loss) unless a preset sets it.
_REGULARITY = {"reg_smooth", "reg_fold"}
_VOXELMORPH = {"reg_cc"} | _REGULARITY
_DEEPRS_R = _VOXELMORPH | {"reg_adv", "disc"}
_DIRECT_JOINT = _DEEPRS_R | {"seg_ce"}
EXPECTED_TERMS = {
    "affine": set(),
    "voxelmorph2": _VOXELMORPH,
    "advreg": _REGULARITY | {"reg_adv", "disc"},
    "unet3d": {"seg_supervised"},
    "unet3d_aug": {"seg_supervised"},
    "fcn3d": {"seg_supervised"},
    "vnet": {"seg_supervised"},
    "deepatlas": _VOXELMORPH | {"reg_anatomy", "seg_weak", "seg_supervised"},
    "hybridcnn": _VOXELMORPH | {"reg_label", "seg_weak", "seg_supervised"},
    "ablation_r": _DEEPRS_R,
    "ablation_rs": _DIRECT_JOINT,
    "ablation_rs_dss": _DIRECT_JOINT,
    "ablation_rs_acm": _DIRECT_JOINT | {"seg_acm"},
    "ablation_rs_drc": _DIRECT_JOINT | {"reg_drc"},
    "deeprs": _DIRECT_JOINT | {"seg_acm", "reg_drc"},
}
EXPECTED_NETWORKS = {
    "affine": (),
    "voxelmorph2": ("registration",),
    "advreg": ("registration", "discriminator"),
    "unet3d": ("segmentation",),
    "deepatlas": ("registration", "segmentation"),
    "hybridcnn": ("registration", "segmentation"),
    "ablation_r": ("registration", "discriminator"),
    "deeprs": ("registration", "segmentation", "discriminator"),
}


def test_every_declared_method_is_checked() -> None:
    assert set(METHODS) == set(EXPECTED_TERMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_TERMS))
def test_terms_of_each_paper_row(name: str) -> None:
    spec = get_method(name)
    assert set(spec.terms) == EXPECTED_TERMS[name]
    assert len(spec.terms) == len(set(spec.terms))
    assert spec.trains == (name != "affine")
    if name in EXPECTED_NETWORKS:
        assert spec.networks == EXPECTED_NETWORKS[name]


def test_segmentation_kinds_and_titles() -> None:
    assert get_method("fcn3d").segmentation_kind == "fcn3d"
    assert get_method("vnet").segmentation_kind == "vnet"
    assert get_method("deeprs").segmentation_kind == "unet3d"
    assert get_method("unet3d_aug").title == "3D U-Net-aug"
    assert get_method("deeprs").title == "DeepRS"
    assert get_method("unet3d").supervised_only and not get_method("deepatlas").supervised_only
    assert get_method("unet3d_aug").manual_augmentation
    assert get_method("hybridcnn").labelled_fixed and not get_method("deepatlas").labelled_fixed


def test_method_specific_constants() -> None:
    assert get_method("advreg").reference_beta == 0.2
    deepatlas = get_method("deepatlas")
    assert deepatlas.segmentation_loss == "dice"
    assert 0 < deepatlas.segmentation_pretrain_fraction < 1
    assert {name for name in METHODS if get_method(name).dss} == {"deeprs", "ablation_rs_dss"}


def test_each_term_has_its_own_weight() -> None:
    """A config lambda scales one term; DeepAtlas multiplies its own three as its paper does."""
    weights = {key: float(n) for n, key in enumerate(WEIGHT_KEYS, start=2)}
    deepatlas = get_method("deepatlas")
    assert deepatlas.weight("reg_anatomy", weights) == 2.0 * weights["anatomy"]
    assert deepatlas.weight("seg_weak", weights) == 2.0 * weights["weak"]
    assert deepatlas.weight("seg_supervised", weights) == 3.0 * weights["supervised"]
    assert deepatlas.weight("reg_cc", weights) == weights["cc"]
    hybrid = get_method("hybridcnn")
    assert hybrid.weight("reg_label", weights) == weights["label"]
    assert hybrid.weight("seg_weak", weights) == weights["weak"]
    assert get_method("deeprs").weight("disc", weights) == 1.0
    assert len(set(WEIGHT_KEYS)) == len(WEIGHT_KEYS)


def test_schema_weights_are_the_registrys() -> None:
    weights = load_schema()["properties"]["train"]["properties"]["weights"]["properties"]
    assert list(weights) == list(WEIGHT_KEYS)
    assert weights["drc"]["default"] == 10  # the paper's lambda_drc


def test_ablation_rows_differ_from_direct_joint_by_one_change() -> None:
    base = get_method("ablation_rs")
    assert set(get_method("ablation_rs_acm").terms) - set(base.terms) == {"seg_acm"}
    assert set(get_method("ablation_rs_drc").terms) - set(base.terms) == {"reg_drc"}
    assert get_method("ablation_rs_dss").terms == base.terms
    assert get_method("ablation_rs_dss").dss and not base.dss


def test_unknown_method_message_lists_valid_names() -> None:
    with pytest.raises(DeeprsError) as error:
        get_method("deep_rs")
    message = str(error.value)
    assert message.startswith("unknown method 'deep_rs'")
    for name in METHODS:
        assert name in message


def test_inconsistent_declaration_is_rejected() -> None:
    with pytest.raises(ValueError, match="term reg_adv needs the discriminator"):
        MethodSpec("bad", "Bad", "none", terms=("reg_cc", "reg_adv"))
    with pytest.raises(ValueError, match="term seg_acm needs the registration and discriminator"):
        MethodSpec("bad", "Bad", "none", terms=("seg_supervised", "seg_acm"))
    with pytest.raises(ValueError, match="DSS samples R's displacements"):
        MethodSpec("bad", "Bad", "none", terms=("seg_supervised",), dss=True)
    with pytest.raises(ValueError, match="unknown loss terms"):
        MethodSpec("bad", "Bad", "none", terms=("reg_ncc",))
    with pytest.raises(ValueError, match="term_weights for terms it does not use"):
        MethodSpec("bad", "Bad", "none", terms=("reg_cc",), term_weights={"reg_smooth": 2.0})


def test_schema_defaults_name_registered_methods() -> None:
    properties = load_schema()["properties"]
    for key in ("methods", "ablation", "label_amount_methods"):
        for name in properties[key]["default"]:
            assert name in METHODS, f"{key} default names unknown method {name}"
    assert properties["ablation"]["default"][0] == "ablation_r"
    assert "unet3d" in properties["ablation"]["default"]
    assert properties["ablation"]["default"][-1] == "deeprs"
