"""The method registry: each row of the paper's tables maps to the intended switches."""

from __future__ import annotations

from dataclasses import fields

import pytest

from deeprs.config import load_schema
from deeprs.errors import DeeprsError
from deeprs.methods import METHODS, MethodSpec, get_method

SWITCHES = [f.name for f in fields(MethodSpec) if f.type in ("bool", bool) and f.name != "trains"]

# The switches that are on for each method; every other boolean switch must be off.
EXPECTED_ON = {
    "affine": set(),
    "voxelmorph2": {"registration", "similarity_ncc", "smoothness"},
    "advreg": {
        "registration",
        "discriminator",
        "adversarial",
        "smoothness",
        "discriminator_lr_schedule",
    },
    "unet3d": {"segmentation", "supervised"},
    "unet3d_aug": {"segmentation", "supervised", "manual_augmentation"},
    "fcn3d": {"segmentation", "supervised"},
    "vnet": {"segmentation", "supervised"},
    "deepatlas": {
        "registration",
        "segmentation",
        "similarity_ncc",
        "smoothness",
        "anatomy_dice",
        "weak_supervision_unweighted",
        "supervised",
    },
    "hybridcnn": {
        "registration",
        "segmentation",
        "similarity_ncc",
        "smoothness",
        "label_constraint",
        "weak_supervision_unweighted",
        "supervised",
    },
}
_DEEPRS_R = {
    "registration",
    "discriminator",
    "adversarial",
    "similarity_ncc",
    "smoothness",
    "discriminator_lr_schedule",
}
_DIRECT_JOINT = _DEEPRS_R | {"segmentation", "augmentation_data"}
EXPECTED_ON |= {
    "ablation_r": _DEEPRS_R,
    "ablation_rs": _DIRECT_JOINT,
    "ablation_rs_dss": _DIRECT_JOINT | {"dss"},
    "ablation_rs_acm": _DIRECT_JOINT | {"acm"},
    "ablation_rs_drc": _DIRECT_JOINT | {"drc"},
    "deeprs": _DIRECT_JOINT | {"dss", "acm", "drc"},
}


def test_every_declared_method_is_checked() -> None:
    assert set(METHODS) == set(EXPECTED_ON)


@pytest.mark.parametrize("name", sorted(EXPECTED_ON))
def test_switches_of_each_paper_row(name: str) -> None:
    spec = get_method(name)
    on = {switch for switch in SWITCHES if getattr(spec, switch)}
    assert on == EXPECTED_ON[name]
    assert spec.trains == (name != "affine")


def test_segmentation_kinds_and_titles() -> None:
    assert get_method("fcn3d").segmentation_kind == "fcn3d"
    assert get_method("vnet").segmentation_kind == "vnet"
    assert get_method("deeprs").segmentation_kind == "unet3d"
    assert get_method("unet3d_aug").title == "3D U-Net-aug"
    assert get_method("deeprs").title == "DeepRS"
    assert get_method("affine").networks == ()
    assert get_method("deeprs").networks == ("registration", "segmentation", "discriminator")
    assert get_method("unet3d").supervised_only and not get_method("deepatlas").supervised_only


def test_method_specific_constants() -> None:
    assert get_method("advreg").reference_beta == 0.2
    deepatlas = get_method("deepatlas")
    assert (deepatlas.anatomy_weight, deepatlas.supervised_weight) == (2.0, 3.0)
    assert deepatlas.segmentation_loss == "dice"
    assert 0 < deepatlas.segmentation_pretrain_fraction < 1


def test_ablation_rows_differ_from_direct_joint_by_one_switch() -> None:
    base = get_method("ablation_rs")
    for name, switch in (
        ("ablation_rs_dss", "dss"),
        ("ablation_rs_acm", "acm"),
        ("ablation_rs_drc", "drc"),
    ):
        spec = get_method(name)
        differing = {s for s in SWITCHES if getattr(spec, s) != getattr(base, s)}
        assert differing == {switch}


def test_unknown_method_message_lists_valid_names() -> None:
    with pytest.raises(DeeprsError) as error:
        get_method("deep_rs")
    message = str(error.value)
    assert message.startswith("unknown method 'deep_rs'")
    for name in METHODS:
        assert name in message


def test_inconsistent_declaration_is_rejected() -> None:
    with pytest.raises(ValueError, match="need the discriminator"):
        MethodSpec("bad", "Bad", "none", registration=True, adversarial=True)
    with pytest.raises(ValueError, match="need R and S"):
        MethodSpec("bad", "Bad", "none", segmentation=True, dss=True)


def test_schema_defaults_name_registered_methods() -> None:
    properties = load_schema()["properties"]
    for key in ("methods", "ablation", "label_amount_methods"):
        for name in properties[key]["default"]:
            assert name in METHODS, f"{key} default names unknown method {name}"
    assert properties["ablation"]["default"][0] == "ablation_r"
    assert "unet3d" in properties["ablation"]["default"]
    assert properties["ablation"]["default"][-1] == "deeprs"
