"""Losses against hand-computed values and naive references; DSS; where gradients flow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deeprs.evaluate import metrics
from deeprs.losses import (
    acm_loss,
    adversarial_loss,
    cross_entropy,
    discriminator_loss,
    drc_loss,
    dss_scale,
    folding_loss,
    local_ncc_loss,
    one_hot,
    reference_image,
    sample_dss_alpha,
    smoothness_loss,
    soft_dice_loss,
)
from deeprs.nets import PixelDiscriminator, UNet3D, VoxelMorph2
from deeprs.nets.spatial import jacobian_determinant, warp, warp_labels_onehot

LN2 = math.log(2.0)

# Two voxels, two classes. Voxel a: logits (0, 0) -> p = (1/2, 1/2), target background.
# Voxel b: logits (ln 3, 0) -> p = (3/4, 1/4), target class 1.
LOGITS = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).view(1, 2, 1, 1, 2)
TARGET = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 1, 2)


def _naive_ncc(image_i: np.ndarray, image_j: np.ndarray, window: int, eps: float) -> float:
    """VoxelMorph's NCC by explicit windows and centred products (zero padding)."""
    half = window // 2
    padded_i = np.pad(image_i, half)
    padded_j = np.pad(image_j, half)
    values = []
    for z, y, x in np.ndindex(*image_i.shape):
        block_i = padded_i[z : z + window, y : y + window, x : x + window]
        block_j = padded_j[z : z + window, y : y + window, x : x + window]
        centred_i = block_i - block_i.mean()
        centred_j = block_j - block_j.mean()
        cross = (centred_i * centred_j).sum()
        values.append(cross**2 / ((centred_i**2).sum() * (centred_j**2).sum() + eps))
    return -float(np.mean(values))


@pytest.mark.parametrize("window", [9, 3])
def test_local_ncc_equals_naive_window_computation(window: int) -> None:
    rng = np.random.default_rng(0)
    image_i = rng.random((7, 10, 11))
    image_j = 0.5 * image_i + rng.random((7, 10, 11))
    ours = local_ncc_loss(
        torch.from_numpy(image_i)[None, None], torch.from_numpy(image_j)[None, None], window
    )
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(_naive_ncc(image_i, image_j, window, 1e-5), rel=1e-4)


def test_local_ncc_of_an_image_with_itself_is_minus_one_and_constant_images_are_finite() -> None:
    image = torch.rand(1, 1, 12, 12, 12)
    assert local_ncc_loss(image, image).item() == pytest.approx(-1.0, abs=1e-4)
    zeros = torch.zeros(1, 1, 12, 12, 12)
    assert local_ncc_loss(zeros, zeros).item() == 0.0
    constant = torch.full((1, 1, 6, 7, 8), 0.5)
    value = local_ncc_loss(constant, constant, window=3)
    assert torch.isfinite(value)
    # Only windows reaching into the zero padding have variance; interior windows give 0.
    expected = _naive_ncc(constant[0, 0].double().numpy(), constant[0, 0].double().numpy(), 3, 1e-5)
    assert value.item() == pytest.approx(expected, rel=1e-4)


def test_local_ncc_is_computed_in_float32_under_autocast() -> None:
    image_i = torch.rand(1, 1, 16, 16, 16)
    image_j = 0.5 * image_i + torch.rand_like(image_i)
    expected = local_ncc_loss(image_i, image_j)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = local_ncc_loss(image_i, image_j)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_local_ncc_refuses_even_windows() -> None:
    image = torch.rand(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="window must be a positive odd number, got 8"):
        local_ncc_loss(image, image, window=8)


def test_smoothness_hand_computed_and_against_loops() -> None:
    # u_d grows by 1 along w and is constant along d and h: only the w-differences of
    # channel 0 are nonzero: 4 of the 12 w-differences are 1 -> 1/3; averaged over 3 axes.
    displacement = torch.zeros(1, 3, 2, 2, 2)
    displacement[0, 0, :, :, 1] = 1.0
    assert smoothness_loss(displacement).item() == pytest.approx(1.0 / 9.0)

    field = np.random.default_rng(1).standard_normal((3, 3, 4, 5))
    per_axis = []
    for axis in (1, 2, 3):
        squares = [
            (np.take(field, i + 1, axis=axis) - np.take(field, i, axis=axis)) ** 2
            for i in range(field.shape[axis] - 1)
        ]
        per_axis.append(np.mean(squares))
    expected = float(np.mean(per_axis))
    assert smoothness_loss(torch.from_numpy(field)[None]).item() == pytest.approx(expected)


def _linear_field(matrix: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """u(x) = A x on a grid of ``shape``: its Jacobian is I + A at every voxel, exactly."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    return torch.from_numpy(np.einsum("ik,k...->i...", matrix, grid))[None].float()


def test_folding_loss_hand_computed_on_linear_fields() -> None:
    # u_d = -2 d mirrors the slice order: det = 1 - 2 = -1 everywhere -> relu(1) = 1.
    mirror = np.diag([-2.0, 0.0, 0.0])
    assert folding_loss(_linear_field(mirror, (4, 5, 6))).item() == pytest.approx(1.0)
    # A random linear map: det(I + A) at every voxel, the penalty relu(-det).
    matrix = np.random.default_rng(3).normal(scale=0.8, size=(3, 3))
    expected = float(np.linalg.det(np.eye(3) + matrix))
    for differences in ("central", "forward"):
        det = jacobian_determinant(_linear_field(matrix, (3, 4, 5)), differences)
        torch.testing.assert_close(det, torch.full_like(det, expected), rtol=1e-5, atol=1e-5)
    assert folding_loss(_linear_field(matrix, (3, 4, 5))).item() == pytest.approx(
        max(0.0, -expected), abs=1e-5
    )
    # No displacement, or a stretch, does not fold: zero penalty.
    assert folding_loss(torch.zeros(2, 3, 3, 4, 5)).item() == 0.0
    assert folding_loss(_linear_field(np.diag([0.5, 1.0, 0.0]), (3, 4, 5))).item() == 0.0


def test_folding_determinants_match_np_gradient_and_per_voxel_linalg_det() -> None:
    field = np.random.default_rng(4).normal(scale=0.7, size=(3, 4, 5, 6))
    # Central differences: np.linalg.det of np.gradient's Jacobian at every voxel (the
    # evaluation's determinant is this function, checked against SimpleITK in test_metrics).
    central = jacobian_determinant(torch.from_numpy(field)[None], "central")[0].numpy()
    gradients = np.stack([np.stack(np.gradient(field[i]), axis=-1) for i in range(3)], axis=-2)
    expected = np.linalg.det(gradients + np.eye(3))
    np.testing.assert_allclose(central, expected, rtol=1e-10, atol=1e-12)
    # Forward differences: np.linalg.det of each interior voxel's forward-difference Jacobian.
    det = jacobian_determinant(torch.from_numpy(field)[None], "forward")[0].numpy()
    for d, h, w in np.ndindex(3, 4, 5):  # interior: every forward difference exists
        jacobian = np.stack(
            [
                field[:, d + 1, h, w] - field[:, d, h, w],
                field[:, d, h + 1, w] - field[:, d, h, w],
                field[:, d, h, w + 1] - field[:, d, h, w],
            ],
            axis=1,
        )
        assert det[d, h, w] == pytest.approx(np.linalg.det(np.eye(3) + jacobian), rel=1e-9)
    # An axis of length 1 has zero derivative: a 2-D field's det is its in-plane 2x2 det.
    flat = torch.zeros(1, 3, 1, 4, 4)
    flat[0, 1] = torch.arange(4.0).view(4, 1) * -3.0  # d(h + u_h)/dh = -2
    for differences in ("central", "forward"):
        assert jacobian_determinant(flat, differences).unique().tolist() == [-2.0]
    with pytest.raises(ValueError, match="central"):
        jacobian_determinant(flat, "backward")
    with pytest.raises(ValueError, match=r"\(N, 3, D, H, W\)"):
        folding_loss(torch.zeros(1, 2, 3, 3, 3))


def test_folding_loss_sees_a_checkerboard_that_central_differences_miss() -> None:
    # u_d alternates +-0.75 along d: every central difference is 0 (det 1, the evaluation's
    # metric sees no folding); the forward differences are -+1.5, so half the voxels fold.
    field = torch.zeros(1, 3, 8, 3, 3)
    field[0, 0] = (0.75 * (-1.0) ** torch.arange(8.0)).view(8, 1, 1)
    assert metrics.nonpositive_jacobian_percent(field[0, :, 1:-1].numpy()) == 0.0
    assert folding_loss(field).item() > 0.05


def test_folding_loss_gradient_descent_unfolds_a_field() -> None:
    field = torch.from_numpy(np.random.default_rng(5).normal(scale=1.0, size=(1, 3, 6, 6, 6)))
    field = field.float().requires_grad_()
    before = metrics.nonpositive_jacobian_percent(field[0].detach().numpy())
    optimizer = torch.optim.SGD([field], lr=1.0)
    for _ in range(300):
        optimizer.zero_grad()
        folding_loss(field).backward()
        optimizer.step()
    after = metrics.nonpositive_jacobian_percent(field[0].detach().numpy())
    forward = float((jacobian_determinant(field.detach(), "forward") <= 0).float().mean()) * 100
    assert before > 30.0
    assert folding_loss(field).item() < 1e-3
    assert after < 5.0 and forward < 5.0  # the relu's gradient stops at det = 0 exactly


def test_cross_entropy_hand_computed() -> None:
    # Voxel a: -log(1/2) = ln 2; voxel b: -log(1/4) = 2 ln 2; mean = 1.5 ln 2.
    assert cross_entropy(LOGITS, TARGET).item() == pytest.approx(1.5 * LN2)


def test_soft_dice_hand_computed() -> None:
    # Background: overlap 1/2, sum p = 5/4, sum t = 1 -> Dice 1/(9/4) = 4/9.
    # Class 1: overlap 1/4, sum p = 3/4, sum t = 1 -> Dice (1/2)/(7/4) = 2/7.
    expected = 1.0 - (4.0 / 9.0 + 2.0 / 7.0) / 2.0
    assert soft_dice_loss(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-4)
    perfect = 20.0 * (2.0 * TARGET - 1.0)
    assert soft_dice_loss(perfect, TARGET).item() == pytest.approx(0.0, abs=1e-5)


def test_acm_hand_computed_and_zero_weight_where_confidence_is_zero() -> None:
    logits = LOGITS.clone().requires_grad_()
    confidence = torch.tensor([1.0, 0.0]).view(1, 1, 1, 1, 2)
    loss = acm_loss(confidence, TARGET, logits)
    assert loss.item() == pytest.approx(LN2 / 2.0)  # (1 * ln 2 + 0 * 2 ln 2) / 2 voxels
    loss.backward()
    assert logits.grad[..., 1].abs().max() == 0.0
    assert logits.grad[..., 0].abs().max() > 0.0
    full = acm_loss(torch.ones(1, 1, 1, 1, 2), TARGET, LOGITS)
    assert full.item() == pytest.approx(cross_entropy(LOGITS, TARGET).item())


def test_acm_does_not_train_the_discriminator() -> None:
    torch.manual_seed(0)
    discriminator = PixelDiscriminator(width=0.25, features=(8, 16))
    segmenter = UNet3D(1, 3, features=(8, 16), width=0.5)
    image, fixed = torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)
    labels = torch.randint(0, 3, (1, 1, 8, 8, 8))
    loss = acm_loss(discriminator.confidence(image, fixed), one_hot(labels, 3), segmenter(fixed))
    loss.backward()
    assert all(p.grad is None for p in discriminator.parameters())
    assert all(p.grad is not None for p in segmenter.parameters())


def test_drc_hand_computed_zero_for_identical_and_reaches_registration() -> None:
    # Voxel a differs: (1/2 - 3/4)^2 + (1/2 - 1/4)^2 = 1/8; voxel b agrees; mean of 4 = 1/32.
    other = torch.tensor([[math.log(3.0), math.log(3.0)], [0.0, 0.0]]).view(1, 2, 1, 1, 2)
    assert drc_loss(LOGITS, other).item() == pytest.approx(1.0 / 32.0)
    assert drc_loss(LOGITS, LOGITS).item() == 0.0

    torch.manual_seed(0)
    registration = VoxelMorph2(width=0.25)
    segmenter = UNet3D(1, 3, features=(8, 16), width=0.5)
    moving, fixed = torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)
    warped = warp(moving, registration(moving, fixed))
    drc_loss(segmenter(warped), segmenter(fixed)).backward()
    assert registration.flow.weight.grad is not None
    assert registration.flow.weight.grad.abs().sum() > 0


def test_adversarial_and_discriminator_losses_hand_computed() -> None:
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 1, 2)
    # -log sigmoid(0) = ln 2, -log sigmoid(ln 3) = -log(3/4).
    expected = (LN2 - math.log(0.75)) / 2.0
    assert adversarial_loss(logits).item() == pytest.approx(expected)
    reference = torch.zeros(1, 1, 1, 1, 1)
    warped = torch.full((1, 1, 1, 1, 1), math.log(3.0))
    # -log(1/2) - log(1 - 3/4) = ln 2 + 2 ln 2.
    assert discriminator_loss(reference, warped).item() == pytest.approx(3.0 * LN2)
    huge = torch.full((1, 1, 1, 1, 1), 200.0)
    assert torch.isfinite(discriminator_loss(-huge, huge))


def test_reference_image_blends_moving_and_fixed() -> None:
    moving, fixed = torch.full((1, 1, 2, 2, 2), 10.0), torch.zeros(1, 1, 2, 2, 2)
    assert torch.allclose(reference_image(moving, fixed, 0.2), torch.full_like(moving, 2.0))
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\], got 1.5"):
        reference_image(moving, fixed, 1.5)


def test_dss_alpha_zero_keeps_moving_and_alpha_one_is_the_full_warp() -> None:
    torch.manual_seed(0)
    moving = torch.rand(2, 1, 6, 7, 8, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 1, 6, 7, 8))
    displacement = 2.0 * torch.randn(2, 3, 6, 7, 8, dtype=torch.float64)
    scaled = dss_scale(displacement, torch.tensor([0.0, 1.0]))
    warped = warp(moving, scaled)
    assert torch.allclose(warped[0], moving[0], atol=1e-12)
    assert torch.allclose(warped[1], warp(moving, displacement)[1])
    assert not torch.allclose(warped[1], moving[1], atol=1e-3)
    soft = warp_labels_onehot(labels, scaled, 3)
    assert torch.allclose(soft[0], one_hot(labels, 3)[0].double(), atol=1e-12)


def test_dss_alpha_is_uniform_seeded_and_per_sample() -> None:
    first = sample_dss_alpha(4, torch.Generator().manual_seed(3), "cpu")
    again = sample_dss_alpha(4, torch.Generator().manual_seed(3), "cpu")
    assert first.shape == (4,) and torch.equal(first, again)
    many = sample_dss_alpha(20000, torch.Generator().manual_seed(4), "cpu")
    assert 0.0 <= many.min() and many.max() < 1.0
    assert many.mean().item() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match=r"alpha must have one value per sample \(2\)"):
        dss_scale(torch.zeros(2, 3, 2, 2, 2), torch.zeros(3))


def test_losses_refuse_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="must have the same shape"):
        cross_entropy(torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 2, 2, 2, 2))
