"""The one trainer: every method trains, resumes exactly, stops on NaN and actually learns.

The cohort here is a tiny hand-made one (two nested ellipsoids with smooth edges, moved
and resized per case) written in the preprocessing step's format, so these tests do not
depend on the phantom or the preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deeprs import losses
from deeprs.cli import main
from deeprs.config import section_defaults
from deeprs.data.cases import Manifest, Split, load_manifest, load_split
from deeprs.errors import DeeprsError
from deeprs.methods import METHODS, get_method
from deeprs.nets.spatial import integrate_velocity, warp
from deeprs.terms import TERM_TITLES
from deeprs.train import TrainSettings, load_models, train
from deeprs.train.checkpoint import read_payload
from deeprs.train.sampling import load_training_data
from deeprs.train.steps import discriminator_lr_factor
from deeprs.train.trainer import CHECKPOINT_FILE, active_updates, build_networks

CPU = torch.device("cpu")
STRUCTURES = {"shell": 1, "core": 2}


def ellipsoid_case(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A (z, y, x) image in [0, 1] and its labels: a core inside a shell, randomly placed."""
    grid = np.meshgrid(*[np.arange(size, dtype=np.float32) for size in shape], indexing="ij")
    half = np.array(shape, dtype=np.float32) / 2
    centre = half + rng.uniform(-1, 1, 3) * half * np.array([0.1, 0.2, 0.2])
    radii = half * np.array([0.6, 0.55, 0.55]) * rng.uniform(0.85, 1.15, 3)
    radius = np.sqrt(
        sum(((axis - c) / r) ** 2 for axis, c, r in zip(grid, centre, radii, strict=True))
    )
    label = np.zeros(shape, np.uint8)
    label[radius < 1.0] = 1
    label[radius < 0.7] = 2
    image = (
        0.1 + 0.4 / (1 + np.exp((radius - 1.0) / 0.08)) + 0.4 / (1 + np.exp((radius - 0.7) / 0.08))
    )
    image = image + rng.normal(0, 0.01, shape)
    return np.clip(image, 0, 1).astype(np.float32), label


def write_cohort(
    folder: Path,
    shape: tuple[int, int, int],
    roles: dict[str, int],
    seed: int = 0,
) -> tuple[Manifest, Split]:
    """Write images, labels, manifest.json and split.json; ``roles`` counts cases per role.

    Every case is labelled (so that tests can score registration on any pair); the
    ``train_fixed`` cases are marked unlabelled in the manifest, as in the real cohort.
    """
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    cases, split = [], {"name": "fold_0", "seed": seed}
    for role, count in roles.items():
        split[role] = []
        for index in range(count):
            case = f"{role}_{index}"
            image, label = ellipsoid_case(rng, shape)
            np.save(folder / "images" / f"{case}.npy", image)
            np.save(folder / "labels" / f"{case}.npy", label)
            labelled = role != "train_fixed"
            cases.append(
                {
                    "id": case,
                    "subject": case,
                    "labelled": labelled,
                    "image": f"images/{case}.npy",
                    "label": f"labels/{case}.npy" if labelled else None,
                }
            )
            split[role].append(case)
    manifest = {"labels": STRUCTURES, "spacing_xyz": [1.0, 1.0, 2.0], "cases": cases}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "split.json").write_text(json.dumps(split))
    loaded = load_manifest(folder / "manifest.json")
    return loaded, load_split(folder / "split.json", loaded)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Split]:
    folder = tmp_path_factory.mktemp("small")
    return write_cohort(folder, (16, 16, 32), {"train_moving": 2, "train_fixed": 2, "test": 2})


def quick(iterations: int = 6, **overrides: object) -> TrainSettings:
    return TrainSettings(iterations=iterations, width=0.25, checkpoint_every=2, seed=5, **overrides)


_R = {"reg_cc", "reg_smooth"}
_D = {"reg_adv", "disc", "disc_lr_scale"}
EXPECTED_COLUMNS = {
    "affine": set(),
    "voxelmorph2": _R,
    "advreg": {"reg_smooth"} | _D,
    "unet3d": {"seg_supervised"},
    "unet3d_aug": {"seg_supervised"},
    "fcn3d": {"seg_supervised"},
    "vnet": {"seg_supervised"},
    "deepatlas": _R | {"reg_anatomy", "seg_weak", "seg_supervised"},
    "hybridcnn": _R | {"reg_label", "seg_weak", "seg_supervised"},
    "deeprs": _R | _D | {"reg_drc", "seg_ce", "seg_acm"},
    "ablation_r": _R | _D,
    "ablation_rs": _R | _D | {"seg_ce"},
    "ablation_rs_dss": _R | _D | {"seg_ce"},
    "ablation_rs_acm": _R | _D | {"seg_ce", "seg_acm"},
    "ablation_rs_drc": _R | _D | {"seg_ce", "reg_drc"},
}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_and_writes_its_outputs(
    name: str, small: tuple[Manifest, Split], tmp_path: Path
) -> None:
    manifest, split = small
    method = get_method(name)
    result = train(method, manifest, split, quick(), tmp_path, CPU)
    assert result.model_path == tmp_path / "model.pt"
    assert (tmp_path / "losses.png").stat().st_size > 0
    assert not (tmp_path / CHECKPOINT_FILE).exists()
    history = pd.read_csv(tmp_path / "losses.csv")
    assert list(history["iteration"]) == (list(range(6)) if method.trains else [])
    nonzero = {column for column in history.columns[1:] if (history[column] != 0).any()}
    assert nonzero == EXPECTED_COLUMNS[name]
    assert np.isfinite(history[list(TERM_TITLES)].to_numpy(dtype=float)).all()
    models = load_models(result.model_path, CPU)
    assert tuple(models) == method.networks
    assert all(not net.training for net in models.values())
    payload = read_payload(result.model_path, "model file")
    assert payload["method"] == name and payload["labels"] == STRUCTURES
    # The validation signal: before training and at the end (validate_every 25 > 6).
    validation = pd.read_csv(result.validation_csv)
    assert list(validation["iteration"]) == ([0, 6] if method.trains else [])
    assert set(validation["source"]) <= {"training"}  # this split sets no cases aside
    if method.trains:
        assert validation["s_dice"].notna().all() == method.segmentation
        assert validation["r_dice"].notna().all() == method.registration
        assert validation["r_folding_pct"].notna().all() == method.registration


def test_folding_penalty_is_computed_and_trains_r_only_where_weighted(
    small: tuple[Manifest, Split], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the paper's weight 0 the penalty is never computed (its column stays 0) and R
    trains as before; weighted, its value is logged and enters R's update. The penalty is
    replaced by one that is never 0 on a short run that may not fold (the real one is
    checked in test_losses)."""
    import deeprs.losses

    monkeypatch.setattr(deeprs.losses, "folding_loss", lambda u: u.float().pow(2).mean())
    manifest, split = small
    for name in ("voxelmorph2", "advreg"):
        method = get_method(name)
        paper = train(method, manifest, split, quick(3), tmp_path / name / "paper", CPU)
        assert (pd.read_csv(paper.losses_csv)["reg_fold"] == 0).all()
        weighted = train(
            method, manifest, split, quick(3, weights={"fold": 5.0}), tmp_path / name / "w", CPU
        )
        assert (pd.read_csv(weighted.losses_csv)["reg_fold"].iloc[1:] > 0).all()
        expected, actual = _state(paper.model_path), _state(weighted.model_path)
        changed = [key for key in expected if not torch.equal(expected[key], actual[key])]
        assert any(key.startswith("registration.") for key in changed)


def _state(path: Path) -> dict[str, torch.Tensor]:
    models = read_payload(path, "model file")["models"]
    return {f"{key}.{name}": t for key, m in models.items() for name, t in m["state_dict"].items()}


class Killed(Exception):
    """Stands in for the job being killed."""


@pytest.mark.parametrize("name", ["deeprs", "unet3d_aug", "deepatlas"])
def test_interrupt_and_resume_gives_the_uninterrupted_weights(
    name: str, small: tuple[Manifest, Split], tmp_path: Path
) -> None:
    manifest, split = small
    method = get_method(name)
    whole = train(method, manifest, split, quick(), tmp_path / "whole", CPU)

    def kill_after_fourth(iteration: int, row: dict[str, float]) -> None:
        if iteration == 3:  # the checkpoint of iteration 4 is already on disk
            raise Killed

    with pytest.raises(Killed):
        train(
            method, manifest, split, quick(), tmp_path / "resumed", CPU, callback=kill_after_fourth
        )
    assert not (tmp_path / "resumed" / "model.pt").exists()
    assert read_payload(tmp_path / "resumed" / CHECKPOINT_FILE, "checkpoint")["iteration"] == 4
    resumed = train(method, manifest, split, quick(), tmp_path / "resumed", CPU)
    assert resumed.resumed_from == 4
    expected, actual = _state(whole.model_path), _state(resumed.model_path)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    pd.testing.assert_frame_equal(pd.read_csv(whole.losses_csv), pd.read_csv(resumed.losses_csv))
    pd.testing.assert_frame_equal(
        pd.read_csv(whole.validation_csv), pd.read_csv(resumed.validation_csv)
    )


def test_checkpoint_of_other_settings_is_not_resumed(
    small: tuple[Manifest, Split], tmp_path: Path
) -> None:
    manifest, split = small
    method = get_method("voxelmorph2")
    for change in ({"lr": 1e-3}, {"integration_steps": 4}):
        out_dir = tmp_path / next(iter(change))
        with pytest.raises(Killed):
            train(method, manifest, split, quick(), out_dir, CPU, callback=_kill_at(2))
        result = train(method, manifest, split, quick(**change), out_dir, CPU)
        assert result.resumed_from == 0


def test_integration_steps_reach_r_and_its_model_file(
    small: tuple[Manifest, Split], tmp_path: Path
) -> None:
    """train.integration_steps makes R diffeomorphic in training and in the saved model."""
    manifest, split = small
    result = train(
        get_method("deeprs"), manifest, split, quick(3, integration_steps=4), tmp_path, CPU
    )
    registration = load_models(result.model_path, CPU)["registration"]
    assert registration.integration_steps == 4
    moving, fixed = torch.rand(2, 1, 1, 16, 16, 32)
    with torch.no_grad():
        displacement = registration(moving, fixed)
        registration.integration_steps = 0
        velocity = registration(moving, fixed)
    torch.testing.assert_close(displacement, integrate_velocity(velocity, 4))
    assert not torch.equal(displacement, velocity)


def _kill_at(stop: int):  # noqa: ANN202
    def callback(iteration: int, row: dict[str, float]) -> None:
        if iteration == stop:
            raise Killed

    return callback


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(
    small: tuple[Manifest, Split], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, split = small
    original = losses.local_ncc_loss
    calls = []

    def ncc_that_breaks(warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        value = original(warped, fixed)
        return value * float("nan") if len(calls) > 3 else value

    monkeypatch.setattr(losses, "local_ncc_loss", ncc_that_breaks)
    with pytest.raises(DeeprsError) as error:
        train(get_method("voxelmorph2"), manifest, split, quick(), tmp_path, CPU)
    checkpoint = tmp_path / CHECKPOINT_FILE
    assert str(error.value) == (
        "training voxelmorph2 on fold_0 stopped at iteration 3: loss term 'reg_cc' is nan; "
        f"the last good checkpoint '{checkpoint}' is kept; lower train.lr or check the input images"
    )
    state = read_payload(checkpoint, "checkpoint")
    assert state["iteration"] == 2
    weights = state["models"]["registration"]["state_dict"].values()
    assert all(torch.isfinite(tensor).all() for tensor in weights)
    assert not (tmp_path / "model.pt").exists()


def test_deepatlas_pretrains_s_then_updates_both() -> None:
    method = get_method("deepatlas")
    schedule = [active_updates(method, i, 100) for i in range(100)]
    assert schedule[:25] == [(False, True)] * 25
    assert schedule[25:] == [(True, True)] * 75
    assert active_updates(get_method("deeprs"), 0, 100) == (True, True)
    assert active_updates(get_method("unet3d"), 0, 100) == (False, True)


def test_fan_discriminator_schedule() -> None:
    factors = [discriminator_lr_factor(loss) for loss in (0.7, 0.5, 0.3, 0.1)]
    assert factors == [1.0, 0.1, 0.01, 0.0]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the structures of two label maps."""
    values = [2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum()) for k in (1, 2)]
    return float(np.mean(values))


@pytest.fixture(scope="module")
def learnable(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Split]:
    folder = tmp_path_factory.mktemp("learnable")
    return write_cohort(
        folder,
        (16, 32, 32),
        {"train_moving": 5, "train_fixed": 5, "test": 4, "validation": 3},
        seed=1,
    )


def _volume(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(np.array(array), dtype=dtype)[None, None]


def test_short_registration_training_beats_the_identity(
    learnable: tuple[Manifest, Split], tmp_path: Path
) -> None:
    """VoxelMorph-2 on its own training pairs (registration is fitted per pair, without
    labels): the warped moving labels overlap the fixed labels better than before."""
    manifest, split = learnable
    settings = TrainSettings(iterations=150, width=0.25, lr=1e-3, checkpoint_every=1000, seed=5)
    result = train(get_method("voxelmorph2"), manifest, split, settings, tmp_path, CPU)
    registration = load_models(result.model_path)["registration"]
    # The labels of the fixed cases exist on disk but are hidden from training.
    labels = {
        case: np.load(manifest.path.parent / "labels" / f"{case}.npy") for case in manifest.cases
    }
    before, after = [], []
    with torch.no_grad():
        for moving in split.train_moving:
            for fixed in split.train_fixed:
                image_m, image_f = (
                    _volume(manifest.image(c), torch.float32) for c in (moving, fixed)
                )
                displacement = registration(image_m, image_f)
                warped = warp(_volume(labels[moving], torch.int64), displacement, mode="nearest")
                before.append(_dice(labels[moving], labels[fixed]))
                after.append(_dice(warped[0, 0].numpy(), labels[fixed]))
    assert np.mean(after) > np.mean(before) + 0.04, (
        f"Dice {np.mean(before):.3f} -> {np.mean(after):.3f}"
    )
    validation = pd.read_csv(result.validation_csv)
    assert set(validation["source"]) == {"validation"}
    assert list(validation["iteration"]) == [0, 25, 50, 75, 100, 125, 150]
    # Before training R is the identity up to its tiny initial flow: its validation Dice is
    # that of the unwarped validation pairs, computed here independently.
    identity = [
        _dice(labels[moving], labels[fixed])
        for fixed in split.validation
        for moving in split.validation
        if moving != fixed
    ]
    assert validation["r_dice"].iloc[0] == pytest.approx(np.mean(identity), abs=0.005)
    # ... and it folds nothing (its first displacements are about 1e-5 voxels).
    assert validation["r_folding_pct"].iloc[0] == 0.0


def test_short_segmentation_training_is_far_above_chance(
    learnable: tuple[Manifest, Split], tmp_path: Path
) -> None:
    manifest, split = learnable
    settings = TrainSettings(iterations=60, width=0.25, lr=2e-3, checkpoint_every=1000, seed=5)
    result = train(get_method("unet3d"), manifest, split, settings, tmp_path, CPU)
    segmentation = load_models(result.model_path)["segmentation"]
    scores, chance = [], []
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for case in split.test:
            label = manifest.label(case)
            predicted = segmentation(_volume(manifest.image(case), torch.float32)).argmax(1)
            scores.append(_dice(predicted[0].numpy(), label))
            chance.append(_dice(rng.integers(0, 3, label.shape), label))
    assert np.mean(scores) > 0.6, f"Dice {np.mean(scores):.3f}, chance {np.mean(chance):.3f}"
    assert np.mean(scores) > 3 * np.mean(chance)
    # The validation curve rose, and its last point is the final model's Dice on the
    # validation cases (never the test cases), computed here independently.
    validation = pd.read_csv(result.validation_csv)
    assert validation["s_dice"].iloc[-1] > validation["s_dice"].iloc[0] + 0.3
    with torch.no_grad():
        final = [
            _dice(
                segmentation(_volume(manifest.image(case), torch.float32)).argmax(1)[0].numpy(),
                manifest.label(case),
            )
            for case in split.validation
        ]
    assert validation["s_dice"].iloc[-1] == pytest.approx(np.mean(final), abs=0.02)


def test_validating_changes_nothing_of_the_training(
    learnable: tuple[Manifest, Split], tmp_path: Path
) -> None:
    """Validating every iteration or never in between gives the same weights and losses."""
    manifest, split = learnable
    runs = {}
    for every in (1, 1000):
        settings = TrainSettings(
            iterations=6, width=0.25, checkpoint_every=1000, validate_every=every, seed=5
        )
        runs[every] = train(
            get_method("deeprs"), manifest, split, settings, tmp_path / str(every), CPU
        )
    dense = pd.read_csv(runs[1].validation_csv)
    assert list(dense["iteration"]) == list(range(7))
    assert list(pd.read_csv(runs[1000].validation_csv)["iteration"]) == [0, 6]
    expected, actual = _state(runs[1].model_path), _state(runs[1000].model_path)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    pd.testing.assert_frame_equal(
        pd.read_csv(runs[1].losses_csv), pd.read_csv(runs[1000].losses_csv)
    )


def test_cli_trains_and_reports_bad_settings(
    small: tuple[Manifest, Split], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, _ = small
    arguments = [
        "train",
        "--method",
        "unet3d",
        "--manifest",
        str(manifest.path),
        "--split",
        str(manifest.path.parent / "split.json"),
        "--out-dir",
        str(tmp_path),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--settings",
    ]
    base = {"iterations": 2, "width": 0.25, "checkpoint_every": 1}

    def settings(**changes: object) -> str:
        return json.dumps({**base, **changes})

    assert main([*arguments, settings(weights={"ce": "one"})]) == 2
    assert "config key 'train.weights.ce': 'one' is not of type 'number'" in capsys.readouterr().err
    assert main([*arguments, settings(weights={"dice": 1})]) == 2
    assert "config key 'train.weights.dice' is not known" in capsys.readouterr().err
    assert main([*arguments, settings(iterations=0)]) == 2
    assert "config key 'train.iterations': 0 is less than the minimum of 1" in (
        capsys.readouterr().err
    )
    assert main([*arguments, settings(threads=2)]) == 2
    assert "config key 'train.threads' is not known" in capsys.readouterr().err
    assert main([*arguments, "{iterations: 2}"]) == 2
    assert "--settings (config section 'train') is not JSON" in capsys.readouterr().err
    assert main([*arguments, settings(weights={"ce": 2, "adv": 1})]) == 0
    assert len(pd.read_csv(tmp_path / "losses.csv")) == 2
    assert set(load_models(tmp_path / "model.pt")) == {"segmentation"}


def test_settings_defaults_are_the_schemas() -> None:
    """TrainSettings() is the schema's train section: one place for every default."""
    defaults = section_defaults("train")
    settings = TrainSettings()
    for key, value in defaults.items():
        expected = settings.lr if key == "discriminator_lr" and value is None else value
        assert getattr(settings, key) == expected, key
    assert TrainSettings.from_json("{}") == settings


def test_only_the_splits_training_labels_are_loaded(small: tuple[Manifest, Split]) -> None:
    """A labelled case used as a fixed image (ACDC's label-amount pool) lends no label."""
    manifest, split = small
    pooled = Split(
        name=split.name,
        seed=split.seed,
        train_moving=split.train_moving[:1],
        train_fixed=[*split.train_fixed, split.train_moving[1], split.test[0]],
        test=split.test[1:],
    )
    data = load_training_data(manifest, pooled, torch.device("cpu"))
    assert set(data.labels) == {split.train_moving[0]}
    assert {split.train_moving[1], split.test[0]} <= set(data.images)


def test_every_method_starts_from_the_same_networks() -> None:
    """S of DeepRS starts where the 3D U-Net's does, R where VoxelMorph-2's does."""
    settings = quick()
    built = {
        name: build_networks(get_method(name), len(STRUCTURES) + 1, settings, CPU)[0]
        for name in ("unet3d", "voxelmorph2", "deeprs")
    }
    for role, reference in (("segmentation", "unet3d"), ("registration", "voxelmorph2")):
        expected = getattr(built[reference], role).state_dict()
        actual = getattr(built["deeprs"], role).state_dict()
        assert all(torch.equal(expected[key], actual[key]) for key in expected)
