"""``deeprs overlays`` (Figs. 6 and 7): the panels show the predictions that evaluation scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deeprs.cli import main
from deeprs.data.cases import load_manifest, load_split
from deeprs.evaluate.engine import (
    evaluate_split,
    load_test_volumes,
    predict_pairs,
    predict_segmentation,
)
from deeprs.methods import get_method
from deeprs.nets import build_network
from deeprs.report import overlays
from deeprs.train.checkpoint import save_model

CPU = torch.device("cpu")


class ShiftAlongX(torch.nn.Module):
    """A stand-in registration net: u = +1 voxel along w (x) everywhere."""

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        displacement = torch.zeros(moving.shape[0], 3, *moving.shape[2:])
        displacement[:, 2] = 1.0
        return displacement


class Threshold(torch.nn.Module):
    """A stand-in segmentation net: class 1 where the image exceeds 0.5."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - image, image - 0.5], dim=1)


def write_tiny_cohort(
    folder: Path, shape: tuple[int, int, int] = (16, 16, 16)
) -> tuple[Path, Path]:
    """Three labelled cases with two box-shaped structures, and a fold split."""
    generator = np.random.default_rng(3)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    cases = []
    for index in range(3):
        label = np.zeros(shape, dtype=np.uint8)
        label[4:12, 3 + index : 9 + index, 4:10] = 1
        label[5:11, 9:13, 6 + index : 12] = 2
        image = (0.2 + 0.3 * label + 0.05 * generator.random(label.shape)).astype(np.float32)
        case = f"case_{index}"
        np.save(folder / "images" / f"{case}.npy", image)
        np.save(folder / "labels" / f"{case}.npy", label)
        cases.append(
            {
                "id": case,
                "subject": case,
                "labelled": True,
                "image": f"images/{case}.npy",
                "label": f"labels/{case}.npy",
            }
        )
    manifest = folder / "manifest.json"
    manifest.write_text(
        json.dumps({"labels": {"myo": 1, "lv": 2}, "spacing_xyz": [2.0, 2.0, 2.0], "cases": cases})
    )
    split = folder / "fold_0.json"
    split.write_text(
        json.dumps(
            {
                "name": "fold_0",
                "seed": 1,
                "train_moving": ["case_2"],
                "train_fixed": [],
                "test": ["case_0", "case_1"],
            }
        )
    )
    return manifest, split


def test_pick_slice_prefers_more_structures_then_more_foreground() -> None:
    label = np.zeros((8, 10, 10), dtype=np.uint8)
    label[1, :, :] = 1  # one structure, large
    label[3, 0, 0], label[3, 0, 1] = 1, 2  # two structures, tiny
    label[5, :4, :4], label[5, 5:, 5:] = 1, 2  # two structures, larger
    assert overlays.pick_slice(label) == 5


def test_pairs_are_warped_by_the_network_displacement(tmp_path: Path) -> None:
    manifest_path, split_path = write_tiny_cohort(tmp_path, shape=(5, 6, 9))
    manifest = load_manifest(manifest_path)
    split = load_split(split_path, manifest)
    volumes = load_test_volumes(manifest, split, CPU)  # padded for the net, cropped back
    predicted = predict_pairs(volumes, [("case_0", "case_1")], ShiftAlongX(), False, True)
    moving_label = np.asarray(manifest.label("case_0"))
    # warped(p) = moving(p + u): every structure moves one voxel towards x = 0.
    expected = np.zeros_like(moving_label)
    expected[..., :-1] = moving_label[..., 1:]
    # The far edge samples the padding, which is background for labels (as in training).
    assert predicted.images is not None
    np.testing.assert_array_equal(predicted.labels[0], expected)
    moving_image = np.asarray(manifest.image("case_0"))
    np.testing.assert_allclose(predicted.images[0][..., :-1], moving_image[..., 1:], atol=1e-6)
    identity = predict_pairs(volumes, [("case_0", "case_1")], None)
    np.testing.assert_array_equal(identity.labels[0], moving_label)
    assert identity.images is None


def test_segmentation_is_the_argmax_cropped_to_the_image(tmp_path: Path) -> None:
    manifest_path, split_path = write_tiny_cohort(tmp_path, shape=(5, 7, 9))
    manifest = load_manifest(manifest_path)
    volumes = load_test_volumes(manifest, load_split(split_path, manifest), CPU)
    prediction = predict_segmentation(volumes, "case_0", Threshold())
    image = np.asarray(manifest.image("case_0"))
    np.testing.assert_array_equal(prediction, (image > 0.5).astype(np.uint8))


@pytest.fixture
def saved_deeprs(tmp_path: Path) -> tuple[Path, Path, Path]:
    manifest, split = write_tiny_cohort(tmp_path / "data")
    results = tmp_path / "results"
    torch.manual_seed(0)
    networks = {
        "registration": ("voxelmorph2", build_network("voxelmorph2", width=0.25)),
        "segmentation": (
            "unet3d",
            build_network("unet3d", in_channels=1, out_channels=3, width=0.25),
        ),
    }
    save_model(
        results / "deeprs" / "fold_0" / "model.pt", "deeprs", networks, {"myo": 1, "lv": 2}, 1
    )
    return manifest, split, results


def test_panel_dice_is_the_dice_that_evaluate_reports(saved_deeprs) -> None:
    manifest_path, split_path, results = saved_deeprs
    manifest = load_manifest(manifest_path)
    split = load_split(split_path, manifest)
    load = overlays.model_loader(results, split.name, CPU)
    table = evaluate_split(get_method("deeprs"), manifest, split, load("deeprs"), CPU, 8, True)
    scores = table.groupby(["task", "sample"])["dice"].mean()
    segmentation, _ = overlays.segmentation_panels(manifest, split, ["deeprs"], load, CPU, True)
    assert segmentation[1].dice == pytest.approx(scores["segmentation", "case_0"], abs=1e-9)
    registration, _ = overlays.registration_panels(manifest, split, ["deeprs"], load, CPU, True)
    assert registration[2].dice == pytest.approx(scores["registration", "case_1->case_0"], abs=1e-9)
    assert "Dice" in registration[2].heading


def test_overlays_command_draws_both_figures(saved_deeprs, capsys) -> None:
    manifest, split, results = saved_deeprs
    out = results / "report"
    argv = ["overlays", "--manifest", str(manifest), "--split", str(split)]
    argv += ["--results", str(results), "--methods", "affine", "unet3d", "deeprs"]
    assert main([*argv, "--out-dir", str(out), "--device", "cpu"]) == 0
    for task in ("registration", "segmentation"):
        path = out / f"overlays_{task}.png"
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000
    broken = split.with_name("broken.json")
    broken.write_text("{")
    assert main(["overlays", "--manifest", str(manifest), "--split", str(broken)] + argv[5:]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "broken.json" in error[0]


def test_overlays_use_no_training_code() -> None:
    import ast
    import inspect

    for module in (overlays, __import__("deeprs.evaluate.engine", fromlist=["x"])):
        tree = ast.parse(inspect.getsource(module))
        imported = [
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module is not None
        ]
        assert not [name for name in imported if name.startswith("deeprs.train")], module
