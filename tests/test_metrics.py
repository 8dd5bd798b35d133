"""Dice, HD95 and folding against independent implementations (SimpleITK, MONAI)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from deeprs.evaluate.metrics import (
    dice,
    hd95,
    jacobian_determinant,
    nonpositive_jacobian_percent,
    surface_distance_maps,
)

LABELS = {"a": 1, "b": 2, "c": 3}
SPACING_ZYX = (3.0, 1.5, 0.8)


def blobs(seed: int, shape: tuple[int, int, int] = (14, 20, 24)) -> np.ndarray:
    """A random class map with irregular structures 1..3 (smoothed noise, thresholded)."""
    rng = np.random.default_rng(seed)
    fields = ndimage.gaussian_filter(rng.standard_normal((3, *shape)), sigma=(0, 2, 2.5, 3))
    classes = (np.argmax(fields, axis=0) + 1).astype(np.uint8)
    classes[np.max(fields, axis=0) < 0.05] = 0
    return classes


def to_sitk(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_ZYX[::-1])
    return image


def test_dice_matches_simpleitk_label_overlap() -> None:
    pred, target = blobs(0), blobs(1)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(to_sitk(target), to_sitk(pred))
    ours = dice(pred, target, LABELS)
    for name, index in LABELS.items():
        assert ours[name] == pytest.approx(overlap.GetDiceCoefficient(index), abs=1e-12)
        assert 0.0 < ours[name] < 1.0


def test_dice_hand_cases() -> None:
    target = np.zeros((2, 3, 4), dtype=np.uint8)
    target[0, :, :2] = 1  # 6 voxels
    pred = np.zeros_like(target)
    pred[0, :, 1:3] = 1  # 6 voxels, 3 shared
    pred[1, 0, 0] = 2  # structure 2 only in the prediction
    scores = dice(pred, target, LABELS)
    assert scores["a"] == pytest.approx(0.5)
    assert scores["b"] == 0.0
    assert math.isnan(scores["c"])  # absent from both
    assert dice(target, target, {"a": 1})["a"] == 1.0


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*")
def test_hd95_matches_monai_on_anisotropic_blobs() -> None:
    pred, target = blobs(2), blobs(3)
    ours = hd95(pred, target, LABELS, SPACING_ZYX)
    one_hot = [torch.nn.functional.one_hot(torch.from_numpy(m).long(), 4) for m in (pred, target)]
    pred_1h, target_1h = (m.permute(3, 0, 1, 2)[None] for m in one_hot)
    reference = compute_hausdorff_distance(
        pred_1h, target_1h, include_background=False, percentile=95, spacing=list(SPACING_ZYX)
    )[0]
    for (name, _), expected in zip(LABELS.items(), reference.tolist(), strict=True):
        assert ours[name] == pytest.approx(expected, rel=1e-5)  # MONAI works in float32
        assert ours[name] > 0


def test_hd95_with_precomputed_target_maps_is_the_same() -> None:
    pred, target = blobs(6), blobs(7)
    target[target == 3] = 0  # absent from the target: NaN either way
    maps = surface_distance_maps(target, LABELS, SPACING_ZYX)
    assert maps["c"] is None
    with_maps = hd95(pred, target, LABELS, SPACING_ZYX, target_maps=maps)
    without = hd95(pred, target, LABELS, SPACING_ZYX)
    assert with_maps["a"] == without["a"] and with_maps["b"] == without["b"]
    assert math.isnan(with_maps["c"]) and math.isnan(without["c"])


def test_hd95_below_simpleitk_maximum_surface_distance() -> None:
    pred, target = blobs(4), blobs(5)
    ours = hd95(pred, target, LABELS, SPACING_ZYX)
    for name, index in LABELS.items():
        surfaces = []
        for mask in (pred == index, target == index):
            surfaces.append(to_sitk((mask & ~ndimage.binary_erosion(mask)).astype(np.uint8)))
        hausdorff = sitk.HausdorffDistanceImageFilter()
        hausdorff.Execute(*surfaces)
        assert 0 < ours[name] <= hausdorff.GetHausdorffDistance() + 1e-9


def test_hd95_hand_cases() -> None:
    pred = np.zeros((10, 10, 10), dtype=np.uint8)
    target = np.zeros_like(pred)
    pred[2, 2, 2] = 1
    target[4, 2, 7] = 1  # 2 voxels in z, 5 in x
    expected = math.hypot(2 * SPACING_ZYX[0], 5 * SPACING_ZYX[2])
    assert hd95(pred, target, {"a": 1}, SPACING_ZYX)["a"] == pytest.approx(expected)
    assert hd95(pred, pred, {"a": 1}, SPACING_ZYX)["a"] == 0.0
    empty = np.zeros_like(pred)
    assert math.isnan(hd95(empty, target, {"a": 1}, SPACING_ZYX)["a"])
    assert math.isnan(hd95(pred, empty, {"a": 1}, SPACING_ZYX)["a"])


def smooth_field(seed: int, shape: tuple[int, int, int], amplitude: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((3, *shape)), sigma=(0, 2, 2, 2))
    return amplitude * field / np.abs(field).max()


def test_jacobian_matches_simpleitk_with_anisotropic_spacing() -> None:
    displacement = smooth_field(6, (12, 14, 16), amplitude=6.0)  # voxels, (d, h, w)
    spacing_xyz = SPACING_ZYX[::-1]
    # SimpleITK wants (x, y, z) vectors in mm, stored per voxel.
    vectors_mm = np.stack([displacement[2 - k] * spacing_xyz[k] for k in range(3)], axis=-1)
    image = sitk.GetImageFromArray(vectors_mm, isVector=True)
    image.SetSpacing(spacing_xyz)
    reference = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(image))
    ours = jacobian_determinant(displacement)
    interior = (slice(1, -1),) * 3  # the borders use one-sided differences here
    np.testing.assert_allclose(ours[interior], reference[interior], rtol=1e-4, atol=1e-5)
    assert (ours <= 0).any() and (ours > 0).any()  # the amplitude folds somewhere


def test_folding_hand_cases() -> None:
    identity = np.zeros((3, 5, 6, 7))
    assert nonpositive_jacobian_percent(identity) == 0.0
    np.testing.assert_allclose(jacobian_determinant(identity), 1.0)
    # u_w = -2 w flips the w axis: det = 1 - 2 = -1 everywhere.
    flipped = np.zeros((3, 5, 6, 7))
    flipped[2] = -2.0 * np.arange(7)
    assert nonpositive_jacobian_percent(flipped) == 100.0
    # a uniform stretch of 50% along d: det = 1.5
    stretched = np.zeros((3, 5, 6, 7))
    stretched[0] = 0.5 * np.arange(5)[:, None, None]
    np.testing.assert_allclose(jacobian_determinant(stretched), 1.5)
    # fold only in the first two d-slices: 2 of 5 slices = 40%
    partial = np.zeros((3, 5, 6, 7))
    partial[0, :3] = -1.5 * np.arange(3)[:, None, None]
    partial[0, 3:] = partial[0, 2]
    assert nonpositive_jacobian_percent(partial) == pytest.approx(100 * 2 / 5)
