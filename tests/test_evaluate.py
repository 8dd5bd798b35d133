"""``deeprs evaluate`` on a tiny synthetic cohort: rows, columns and values (deeprs.evaluate.engine)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from deeprs.cli import main
from deeprs.data.cases import Split, load_manifest, load_split
from deeprs.errors import DataError
from deeprs.evaluate import METRICS_COLUMNS
from deeprs.evaluate.engine import evaluate_split, load_networks, load_test_volumes
from deeprs.evaluate.metrics import hd95
from deeprs.methods import get_method
from deeprs.nets import UNet3D, VoxelMorph2
from deeprs.train.checkpoint import save_model
from deeprs.train.trainer import TrainSettings, train

LABELS = {"a": 1, "b": 2}
SHAPE = (6, 10, 12)  # (z, y, x), padded to 16^3 for the nets
SPACING_XYZ = (1.0, 1.5, 2.5)
CASES = ("c0", "c1", "c2")


def case_label(offset: int) -> np.ndarray:
    """Two boxes away from the borders; ``offset`` moves them along x and y."""
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[1:4, 2 + offset : 6 + offset, 2 : 6 + offset] = 1
    label[2:5, 5:8, 7 + offset : 10] = 2
    return label


@pytest.fixture
def cohort(tmp_path: Path) -> tuple[Path, Path]:
    """Manifest with three labelled cases and one unlabelled one, and a split testing on c0..c2."""
    folder = tmp_path / "preprocessed"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rng = np.random.default_rng(0)
    cases = []
    for index, case in enumerate(CASES):
        label = case_label(index)
        image = (0.3 * label + 0.05 * rng.random(SHAPE)).astype(np.float32)
        np.save(folder / f"images/{case}.npy", image)
        np.save(folder / f"labels/{case}.npy", label)
        cases.append(
            {
                "id": case,
                "subject": case,
                "labelled": True,
                "image": f"images/{case}.npy",
                "label": f"labels/{case}.npy",
            }
        )
    np.save(folder / "images/u0.npy", rng.random(SHAPE, dtype=np.float32))
    cases.append(
        {"id": "u0", "subject": "u0", "labelled": False, "image": "images/u0.npy", "label": None}
    )
    manifest = {"labels": LABELS, "spacing_xyz": list(SPACING_XYZ), "cases": cases}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    split = {
        "name": "fold_2",
        "seed": 0,
        "train_moving": [],
        "train_fixed": ["u0"],
        "test": list(CASES),
    }
    (tmp_path / "fold_2.json").write_text(json.dumps(split))
    return folder / "manifest.json", tmp_path / "fold_2.json"


def evaluate(cohort: tuple[Path, Path], out: Path, method: str, model: Path | None = None) -> int:
    manifest, split = cohort
    argv = [
        "evaluate",
        "--method",
        method,
        "--split",
        str(split),
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    return main(argv + (["--model", str(model)] if model else []))


def sitk_dice(pred: np.ndarray, target: np.ndarray, index: int) -> float:
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(sitk.GetImageFromArray(target), sitk.GetImageFromArray(pred))
    return overlap.GetDiceCoefficient(index)


def test_affine_scores_the_aligned_labels(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "affine" / "metrics.csv"
    assert evaluate(cohort, out, "affine") == 0
    table = pd.read_csv(out)
    assert tuple(table.columns) == METRICS_COLUMNS
    assert len(table) == 6 * len(LABELS)  # 3 x 2 ordered pairs, one row per structure
    assert set(table["task"]) == {"registration"}
    assert set(table["method"]) == {"affine"} and set(table["fold"]) == {2}
    assert (table["nonpositive_jacobian_pct"] == 0).all()
    assert table.groupby("sample").size().eq(len(LABELS)).all()
    spacing_zyx = SPACING_XYZ[::-1]
    for row in table.itertuples():
        moving, fixed = row.sample.split("->")
        moving_label, fixed_label = case_label(CASES.index(moving)), case_label(CASES.index(fixed))
        index = LABELS[row.structure]
        assert row.dice == pytest.approx(sitk_dice(moving_label, fixed_label, index), abs=1e-5)
        expected_hd95 = hd95(moving_label, fixed_label, LABELS, spacing_zyx)[row.structure]
        assert row.hd95_mm == pytest.approx(expected_hd95, rel=1e-5)
    assert (table["dice"] < 1).all() and (table["hd95_mm"] > 0).all()


def zero_flow_voxelmorph() -> VoxelMorph2:
    network = VoxelMorph2(width=0.25)
    nn.init.zeros_(network.flow.weight)
    return network


def test_identity_model_from_checkpoint_equals_affine(
    cohort: tuple[Path, Path], tmp_path: Path
) -> None:
    model = tmp_path / "voxelmorph2" / "model.pt"
    save_model(
        model,
        "voxelmorph2",
        {"registration": ("voxelmorph2", zero_flow_voxelmorph())},
        LABELS,
        iteration=1,
    )
    assert evaluate(cohort, tmp_path / "vm.csv", "voxelmorph2", model) == 0
    assert evaluate(cohort, tmp_path / "affine.csv", "affine") == 0
    learned, affine = pd.read_csv(tmp_path / "vm.csv"), pd.read_csv(tmp_path / "affine.csv")
    assert set(learned["method"]) == {"voxelmorph2"}
    columns = ["sample", "structure", "dice", "hd95_mm", "nonpositive_jacobian_pct"]
    pd.testing.assert_frame_equal(learned[columns], affine[columns])


class ShiftPerMovingImage(nn.Module):
    """A registration 'network' predicting u = +shift voxels along w (x), shift set per moving image."""

    def __init__(self, shifts: list[tuple[torch.Tensor, int]]) -> None:
        super().__init__()
        self.shifts = shifts

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        displacement = torch.zeros((moving.shape[0], 3, *moving.shape[2:]))
        for k in range(moving.shape[0]):
            shift = next(s for img, s in self.shifts if torch.equal(img[0], moving[k]))
            displacement[k, 2] = float(shift)
        return displacement


class Oracle(nn.Module):
    """A segmentation 'network' whose logits are the one-hot of a known label map."""

    def __init__(self, labels_by_image: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.labels_by_image = labels_by_image

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        label = next(lab for img, lab in self.labels_by_image if torch.equal(img, image))
        return nn.functional.one_hot(label[:, 0], len(LABELS) + 1).permute(0, 4, 1, 2, 3).float()


SHIFTS = {"c0": 1, "c1": 0, "c2": 2}


@pytest.mark.parametrize("batch_size", [1, 4])
def test_warp_direction_and_segmentation_rows(cohort: tuple[Path, Path], batch_size: int) -> None:
    manifest_path, split_path = cohort
    manifest = load_manifest(manifest_path)
    split = load_split(split_path, manifest)
    volumes = load_test_volumes(manifest, split, torch.device("cpu"))
    assert volumes.images["c0"].shape == (1, 1, 16, 16, 16) and volumes.shape == SHAPE
    registration_net = ShiftPerMovingImage([(volumes.images[c], SHIFTS[c]) for c in CASES])
    oracle = Oracle([(volumes.images[c], volumes.labels[c]) for c in CASES])
    models = {"registration": registration_net, "segmentation": oracle}
    spec = get_method("deepatlas")
    table = evaluate_split(spec, manifest, split, models, torch.device("cpu"), batch_size)
    registration = table[table["task"] == "registration"]
    assert len(registration) == 6 * len(LABELS)
    # warped(p) = moving(p + u): with u = +s along x the moving boxes move s voxels to -x.
    for row in registration.itertuples():
        moving, fixed = row.sample.split("->")
        shifted = np.roll(case_label(CASES.index(moving)), -SHIFTS[moving], axis=2)
        index = LABELS[row.structure]
        assert row.dice == pytest.approx(
            sitk_dice(shifted, case_label(CASES.index(fixed)), index), abs=1e-9
        )
        assert row.nonpositive_jacobian_pct == 0.0
    segmentation = table[table["task"] == "segmentation"]
    assert sorted(segmentation["sample"]) == sorted(CASES * len(LABELS))
    assert (segmentation["dice"] == 1.0).all() and (segmentation["hd95_mm"] == 0.0).all()
    assert segmentation["nonpositive_jacobian_pct"].isna().all()


def test_trained_segmentation_model_runs(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = UNet3D(1, len(LABELS) + 1, features=(8, 16), width=1.0)
    model = tmp_path / "model.pt"
    save_model(model, "unet3d", {"segmentation": ("unet3d", network)}, LABELS, iteration=1)
    out = tmp_path / "metrics.csv"
    assert evaluate(cohort, out, "unet3d", model) == 0
    table = pd.read_csv(out)
    assert len(table) == len(CASES) * len(LABELS) and set(table["task"]) == {"segmentation"}
    assert table["dice"].dropna().between(0, 1).all()


def test_bad_inputs_have_clear_messages(
    cohort: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert evaluate(cohort, tmp_path / "m.csv", "voxelmorph2") == 2
    assert "method 'voxelmorph2' is trained: pass its model file with --model" in (
        capsys.readouterr().err
    )
    model = tmp_path / "model.pt"
    save_model(
        model,
        "advreg",
        {"registration": ("voxelmorph2", zero_flow_voxelmorph())},
        LABELS,
        iteration=1,
    )
    assert evaluate(cohort, tmp_path / "m.csv", "voxelmorph2", model) == 2
    assert "was trained for method 'advreg', not 'voxelmorph2'" in capsys.readouterr().err
    save_model(
        model,
        "voxelmorph2",
        {"registration": ("voxelmorph2", zero_flow_voxelmorph())},
        {"a": 1},
        iteration=1,
    )
    assert evaluate(cohort, tmp_path / "m.csv", "voxelmorph2", model) == 2
    assert "retrain on this cohort" in capsys.readouterr().err
    save_model(
        model,
        "deepatlas",
        {"registration": ("voxelmorph2", zero_flow_voxelmorph())},
        LABELS,
        iteration=1,
    )
    assert evaluate(cohort, tmp_path / "m.csv", "deepatlas", model) == 2
    assert "method 'deepatlas' needs a 'segmentation' network" in capsys.readouterr().err
    manifest, split = cohort
    argv = ["evaluate", "--method", "affine", "--split", str(split), "--manifest", str(manifest)]
    assert main([*argv, "--out", str(tmp_path / "m.csv"), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists()


def test_model_written_by_the_trainer_evaluates(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    manifest_path, split_path = cohort
    manifest = load_manifest(manifest_path)
    split = Split("fold_0", 0, ["c0"], ["u0"], ["c1", "c2"])
    split_file = tmp_path / "fold_0.json"
    split_file.write_text(json.dumps(split.to_json()))
    settings = TrainSettings(iterations=2, width=0.25, checkpoint_every=1, seed=0)
    result = train(
        get_method("deeprs"), manifest, split, settings, tmp_path / "run", torch.device("cpu")
    )
    out = tmp_path / "metrics.csv"
    assert evaluate((manifest_path, split_file), out, "deeprs", result.model_path) == 0
    table = pd.read_csv(out)
    assert table.groupby("task").size().to_dict() == {
        "registration": 2 * len(LABELS),
        "segmentation": 2 * len(LABELS),
    }
    registration = table[table["task"] == "registration"]
    assert registration["nonpositive_jacobian_pct"].between(0, 100).all()


def test_training_validation_and_evaluation_score_alike(
    cohort: tuple[Path, Path], tmp_path: Path
) -> None:
    """The trainer's last validation measurement and ``deeprs evaluate`` of the final model
    agree when they score the same cases: one loading, forward pass, memory layout
    (channels_last, as the trainer sets it) and Dice for both."""
    manifest_path, _ = cohort
    manifest = load_manifest(manifest_path)
    cases = ["c1", "c2"]
    split = Split("fold_0", 0, ["c0"], ["u0"], cases, validation=cases)
    # R must leave the identity without collapsing: in float32 this toy study needs about
    # 40 iterations at 3e-3 (10 at 1e-2 left every warped label where it was; higher rates
    # drove R's Dice to 0). Float32 on every CPU: with bf16 autocast (a CPU with AMX) R had
    # not left the identity at 40 iterations.
    settings = TrainSettings(
        iterations=40,
        width=0.25,
        lr=0.003,
        checkpoint_every=40,
        validate_every=40,
        seed=1,
        cpu_bf16=False,
    )
    result = train(
        get_method("deeprs"), manifest, split, settings, tmp_path / "run", torch.device("cpu")
    )
    first, last = pd.read_csv(result.validation_csv).iloc[[0, -1]].itertuples()
    assert abs(last.r_dice - first.r_dice) > 0.01, "R should have left the identity"
    assert last.r_dice > 0.1 and last.s_dice > 0.1, "R and S should not have collapsed"
    last = {
        "iteration": last.iteration,
        "s_dice": last.s_dice,
        "r_dice": last.r_dice,
        "r_folding_pct": last.r_folding_pct,
    }
    networks = load_networks(get_method("deeprs"), result.model_path, manifest, torch.device("cpu"))
    table = evaluate_split(
        get_method("deeprs"), manifest, split, networks, torch.device("cpu"), 8, settings.cpu_bf16
    )
    assert networks["registration"].flow.weight.is_contiguous(memory_format=torch.channels_last_3d)
    per_sample = table.groupby(["task", "sample"])["dice"].apply(lambda d: d.dropna().mean())
    assert last["iteration"] == 40
    assert per_sample["segmentation"].mean() == pytest.approx(last["s_dice"], abs=1e-9)
    assert per_sample["registration"].mean() == pytest.approx(last["r_dice"], abs=1e-9)
    folding = table[table["task"] == "registration"].groupby("sample")["nonpositive_jacobian_pct"]
    assert folding.first().mean() == pytest.approx(last["r_folding_pct"], abs=1e-9)


LABEL_VALUES = {"a": 205, "b": 420}
SHIFT_MM = (2.0, 1.5, 0.0)
"""The recorded affine of every case: grid point + SHIFT_MM = image point (2 and 1 voxels)."""


def with_native_sources(manifest_path: Path, drawn: dict[str, np.ndarray]) -> None:
    """Record source files and transforms in the cohort's manifest, as preprocessing does.

    Each case's source image is the training grid seen through a flipped x axis and moved
    by :data:`SHIFT_MM`, so its voxel ``(x, y, z)`` lies on grid voxel ``(11 - x, y, z)``;
    its label file holds ``drawn[case]`` (classes on that grid) as the values of
    :data:`LABEL_VALUES`.
    """
    folder = manifest_path.parent
    manifest = json.loads(manifest_path.read_text())
    manifest["label_values"] = LABEL_VALUES
    manifest["target_space"] = {
        "origin_xyz": [0.0, 0.0, 0.0],
        "spacing_xyz": list(SPACING_XYZ),
        "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "shape_xyz": list(SHAPE[::-1]),
    }
    (folder / "transforms").mkdir()
    (folder / "sources").mkdir()
    affine = sitk.AffineTransform(3)
    affine.SetTranslation(SHIFT_MM)
    for entry in manifest["cases"]:
        case = entry["id"]
        sitk.WriteTransform(affine, str(folder / f"transforms/{case}.tfm"))
        entry["transform"] = f"transforms/{case}.tfm"
        image = sitk.GetImageFromArray(np.flip(np.load(folder / entry["image"]), axis=2))
        values = np.zeros(SHAPE, np.int16)
        for name, index in LABELS.items():
            values[drawn.get(case, np.zeros(SHAPE)) == index] = LABEL_VALUES[name]
        label = sitk.GetImageFromArray(values)
        for volume, kind in ((image, "image"), (label, "label")):
            volume.SetSpacing(SPACING_XYZ)
            volume.SetDirection([-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
            volume.SetOrigin([(SHAPE[2] - 1) * SPACING_XYZ[0] + SHIFT_MM[0], SHIFT_MM[1], 0.0])
            sitk.WriteImage(volume, str(folder / f"sources/{case}_{kind}.nii.gz"))
        entry["source_image"] = str(folder / f"sources/{case}_image.nii.gz")
        entry["source_label"] = (
            str(folder / f"sources/{case}_label.nii.gz") if entry["label"] else None
        )
    manifest_path.write_text(json.dumps(manifest))


def test_native_rows_score_the_prediction_carried_onto_each_image(
    cohort: tuple[Path, Path],
) -> None:
    """``segmentation_native``: S's probabilities go through the recorded affine onto the
    source image's own (flipped, shifted) grid and meet the label file's values. A label
    drawn as the grid label scores Dice 1 and HD95 0; one with structure ``a`` drawn one
    voxel further along x (the flipped axis) scores SimpleITK's Dice of that difference and
    one voxel's spacing along x (1 mm) of HD95. S runs once per case for both tasks."""
    manifest_path, split_path = cohort
    moved = np.roll(case_label(1), 1, axis=2)
    drawn = {case: case_label(CASES.index(case)) for case in CASES}
    drawn["c1"] = np.where(case_label(1) == 1, 0, case_label(1))
    drawn["c1"][moved == 1] = 1
    with_native_sources(
        manifest_path, {case: np.flip(label, axis=2) for case, label in drawn.items()}
    )
    manifest = load_manifest(manifest_path)
    split = load_split(split_path, manifest)
    volumes = load_test_volumes(manifest, split, torch.device("cpu"))
    oracle = Oracle([(volumes.images[c], volumes.labels[c]) for c in CASES])
    calls = []
    oracle.register_forward_hook(lambda *_: calls.append(1))
    table = evaluate_split(
        get_method("unet3d"), manifest, split, {"segmentation": oracle}, torch.device("cpu")
    )
    assert len(calls) == len(CASES)
    grid = table[table["task"] == "segmentation"]
    assert (grid["dice"] == 1.0).all()
    native = table[table["task"] == "segmentation_native"].set_index(["sample", "structure"])
    assert len(native) == len(CASES) * len(LABELS)
    assert native["nonpositive_jacobian_pct"].isna().all()
    for case in ("c0", "c2"):
        assert (native.loc[case, "dice"] == 1.0).all() and (native.loc[case, "hd95_mm"] == 0).all()
    expected_a = sitk_dice(case_label(1), drawn["c1"], LABELS["a"])
    assert 0.5 < expected_a < 1.0
    assert native.loc[("c1", "a"), "dice"] == pytest.approx(expected_a, abs=1e-9)
    assert native.loc[("c1", "a"), "hd95_mm"] == pytest.approx(SPACING_XYZ[0])
    assert native.loc[("c1", "b"), "dice"] == pytest.approx(
        sitk_dice(case_label(1), drawn["c1"], LABELS["b"]), abs=1e-9
    )


def test_an_old_manifest_is_scored_on_the_grid_only(
    cohort: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A manifest written before source files and transforms were recorded: one log line."""
    manifest = load_manifest(cohort[0])
    assert manifest.label_values is None and manifest.cases["c0"].transform_path is None
    split = load_split(cohort[1], manifest)
    volumes = load_test_volumes(manifest, split, torch.device("cpu"))
    oracle = Oracle([(volumes.images[c], volumes.labels[c]) for c in CASES])
    with caplog.at_level("WARNING"):
        table = evaluate_split(
            get_method("unet3d"), manifest, split, {"segmentation": oracle}, torch.device("cpu")
        )
    assert set(table["task"]) == {"segmentation"}
    lines = [r.getMessage() for r in caplog.records if "rerun preprocessing" in r.getMessage()]
    assert len(lines) == 1 and str(cohort[0]) in lines[0]


def test_a_missing_source_file_is_one_line(
    cohort: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest_path, _ = cohort
    with_native_sources(manifest_path, {case: case_label(CASES.index(case)) for case in CASES})
    source = manifest_path.parent / "sources" / "c1_label.nii.gz"
    source.unlink()
    torch.manual_seed(0)
    network = UNet3D(1, len(LABELS) + 1, features=(8, 16), width=1.0)
    model = tmp_path / "model.pt"
    save_model(model, "unet3d", {"segmentation": ("unet3d", network)}, LABELS, iteration=1)
    assert evaluate(cohort, tmp_path / "m.csv", "unet3d", model) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"source label '{source}'" in error[0]
    assert "restore the cohort folder" in error[0]
    assert not (tmp_path / "m.csv").exists()
    manifest = load_manifest(manifest_path)
    calls = []
    network.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(DataError, match="c1_label.nii.gz"):
        evaluate_split(
            get_method("unet3d"),
            manifest,
            load_split(cohort[1], manifest),
            {"segmentation": network},
            torch.device("cpu"),
        )
    assert not calls, "the missing file stops the run before S runs"
