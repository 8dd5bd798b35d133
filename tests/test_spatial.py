"""The spatial transformer against SimpleITK and exact integer shifts; the velocity-field
integration against an ODE solver."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

from deeprs.evaluate.metrics import jacobian_determinant
from deeprs.nets.spatial import (
    identity_grid,
    integrate_velocity,
    one_hot,
    warp,
    warp_labels_onehot,
)

SHAPE_ZYX = (10, 12, 14)
SPACING_XYZ = (0.8, 1.5, 2.5)  # anisotropic and non-unit, so axis or unit slips show
ORIGIN_XYZ = (3.0, -2.0, 7.0)


def _smooth_random(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    return field / np.abs(field).max()


def _sitk_warp(image_zyx: np.ndarray, displacement_dhw: np.ndarray) -> np.ndarray:
    """Warp with SimpleITK's DisplacementFieldTransform + linear Resample (physical space)."""
    image = sitk.GetImageFromArray(image_zyx)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN_XYZ)
    # ITK vectors are (x, y, z) in mm; our channels are (d, h, w) = (z, y, x) in voxels.
    vectors_xyz_mm = np.stack(
        [displacement_dhw[2 - axis] * SPACING_XYZ[axis] for axis in range(3)], axis=-1
    )
    field = sitk.GetImageFromArray(vectors_xyz_mm.astype(np.float64), isVector=True)
    field.CopyInformation(image)
    transform = sitk.DisplacementFieldTransform(field)
    resampled = sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    return sitk.GetArrayFromImage(resampled)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_warp_matches_simpleitk_displacement_field_resampling(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(7)
    image = _smooth_random(rng, SHAPE_ZYX, sigma=1.5)
    displacement = 2.5 * np.stack([_smooth_random(rng, SHAPE_ZYX, sigma=3.0) for _ in range(3)])

    ours = (
        warp(
            torch.from_numpy(image)[None, None].to(dtype),
            torch.from_numpy(displacement)[None].to(dtype),
        )[0, 0]
        .double()
        .numpy()
    )
    reference = _sitk_warp(image, displacement)

    # Compare where p + u(p) stays inside the grid: outside, SimpleITK returns its default
    # value (0) and we return the border value by design.
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE_ZYX], indexing="ij"))
    target = grid + displacement
    upper = np.array(SHAPE_ZYX).reshape(3, 1, 1, 1) - 1
    inside = np.all((target >= 0.01) & (target <= upper - 0.01), axis=0)
    assert inside.mean() > 0.5
    tolerance = 1e-4 * np.abs(image).max()
    assert np.abs(ours - reference)[inside].max() < tolerance
    # The displacement really moves things: the comparison is not identity vs identity.
    assert np.abs(reference - image)[inside].max() > 0.1


def test_integer_shift_moves_by_whole_voxels_along_each_axis() -> None:
    labels = torch.randint(0, 5, (1, 1, 6, 7, 8))
    for axis in range(3):
        displacement = torch.zeros(1, 3, 6, 7, 8)
        displacement[:, axis] = 2.0
        warped = warp(labels, displacement, mode="nearest")
        assert warped.dtype == labels.dtype
        kept = [slice(None)] * 2 + [slice(None)] * 3
        source = [slice(None)] * 2 + [slice(None)] * 3
        kept[2 + axis] = slice(0, -2)
        source[2 + axis] = slice(2, None)
        assert torch.equal(warped[tuple(kept)], labels[tuple(source)])
        # Beyond the border the last slice is repeated (padding_mode="border").
        last = [slice(None)] * 5
        last[2 + axis] = slice(-1, None)
        repeated = warped.narrow(2 + axis, warped.shape[2 + axis] - 2, 2)
        assert torch.equal(repeated, labels[tuple(last)].expand_as(repeated))


def test_zero_displacement_is_identity() -> None:
    image = torch.rand(2, 3, 5, 6, 7, dtype=torch.float64)
    assert torch.allclose(warp(image, torch.zeros(2, 3, 5, 6, 7, dtype=torch.float64)), image)


def test_half_voxel_shift_interpolates_linearly() -> None:
    image = torch.arange(8, dtype=torch.float64).view(1, 1, 1, 1, 8).expand(1, 1, 3, 3, 8)
    displacement = torch.zeros(1, 3, 3, 3, 8, dtype=torch.float64)
    displacement[:, 2] = 0.5
    warped = warp(image.contiguous(), displacement)
    expected = torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.0], dtype=torch.float64)
    assert torch.allclose(warped[0, 0, 1, 1], expected)


def test_identity_grid_holds_voxel_coordinates_and_is_cached() -> None:
    grid = identity_grid((2, 3, 4), "cpu", torch.float32)
    assert grid.shape == (1, 3, 2, 3, 4)
    assert grid[0, :, 1, 2, 3].tolist() == [1.0, 2.0, 3.0]
    assert identity_grid((2, 3, 4), "cpu", torch.float32) is grid


def test_warped_onehot_labels_are_soft_probabilities_and_differentiable() -> None:
    labels = torch.randint(0, 4, (1, 1, 6, 6, 6))
    unmoved = warp_labels_onehot(labels, torch.zeros(1, 3, 6, 6, 6), 4)
    assert torch.allclose(unmoved, one_hot(labels, 4), atol=1e-6)
    displacement = (0.7 * torch.randn(1, 3, 6, 6, 6)).requires_grad_()
    soft = warp_labels_onehot(labels, displacement, 4)
    assert soft.shape == (1, 4, 6, 6, 6)
    assert torch.allclose(soft.sum(dim=1), torch.ones(1, 6, 6, 6), atol=1e-5)
    assert soft.min() >= 0
    soft[:, 1].sum().backward()
    assert displacement.grad is not None and displacement.grad.abs().sum() > 0


def test_one_hot_values_and_range_check() -> None:
    labels = torch.tensor([0, 2, 1]).view(1, 1, 1, 1, 3)
    encoded = one_hot(labels, 3)
    assert encoded.dtype == torch.float32
    assert encoded[0, :, 0, 0].T.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    with pytest.raises(ValueError, match=r"values in \[0, 2\] but num_classes=2 allows only 0..1"):
        one_hot(labels, 2)


def test_bad_inputs_are_refused_with_clear_messages() -> None:
    image = torch.rand(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="mode must be one of"):
        warp(image, torch.zeros(1, 3, 4, 4, 4), mode="bicubic")
    with pytest.raises(ValueError, match=r"displacement must be \(N, 3, D, H, W\)"):
        warp(image, torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="must share batch size and spatial shape"):
        warp(image, torch.zeros(1, 3, 4, 4, 5))
    with pytest.raises(ValueError, match="only be warped with mode='nearest'"):
        warp(torch.zeros(1, 1, 4, 4, 4, dtype=torch.long), torch.zeros(1, 3, 4, 4, 4))


def test_bf16_displacements_are_sampled_in_float32() -> None:
    # In bf16, coordinates near voxel 100 are only resolved to 0.5 voxel.
    image = torch.rand(1, 1, 4, 4, 100)
    displacement = torch.full((1, 3, 4, 4, 100), 0.3).bfloat16()
    expected = warp(image, displacement.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        warped = warp(image, displacement)
    assert warped.dtype == torch.float32
    assert torch.allclose(warped, expected, atol=1e-6)


INTEGRATION_SHAPE = (24, 24, 24)
INTERIOR = (slice(None), slice(4, -4), slice(4, -4), slice(4, -4))


def _velocity(amplitude: float, sigma: float, seed: int = 0) -> np.ndarray:
    """A smooth random (3, D, H, W) velocity field whose largest component is ``amplitude``."""
    rng = np.random.default_rng(seed)
    field = np.stack([_smooth_random(rng, INTEGRATION_SHAPE, sigma) for _ in range(3)])
    return field * amplitude / np.abs(field).max()


def _flow_by_runge_kutta(velocity: np.ndarray, steps: int = 32) -> np.ndarray:
    """exp(v) by integrating dx/dt = v(x) over t in [0, 1] from every voxel (RK4, trilinear
    v): the displacement x(1) - x(0), independent of the warp being tested."""
    start = np.stack(np.meshgrid(*map(np.arange, INTEGRATION_SHAPE), indexing="ij")).astype(float)

    def speed(points: np.ndarray) -> np.ndarray:
        return np.stack(
            [map_coordinates(velocity[c], points, order=1, mode="nearest") for c in range(3)]
        )

    points, h = start.copy(), 1.0 / steps
    for _ in range(steps):
        k1 = speed(points)
        k2 = speed(points + h / 2 * k1)
        k3 = speed(points + h / 2 * k2)
        k4 = speed(points + h * k3)
        points = points + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return points - start


def test_scaling_and_squaring_matches_an_ode_solver() -> None:
    velocity = _velocity(amplitude=3.0, sigma=3.0)
    reference = _flow_by_runge_kutta(velocity)
    integrated = integrate_velocity(torch.tensor(velocity[None]), steps=7)[0].numpy()
    # Away from the border (where the solver and the warp pad differently): within 0.05 voxel
    # of a flow up to 3 voxels long, while v itself is 0.3+ voxel off.
    assert np.abs(integrated - reference)[INTERIOR].max() < 0.05
    assert np.abs(velocity - reference)[INTERIOR].max() > 0.3


def test_integrated_flows_of_v_and_minus_v_are_inverse() -> None:
    velocity = torch.tensor(_velocity(amplitude=3.0, sigma=3.0)[None])
    forward = integrate_velocity(velocity, steps=7)
    backward = integrate_velocity(-velocity, steps=7)
    round_trip = backward + warp(forward, backward)  # the displacement of exp(v) o exp(-v)
    assert forward.abs().max() > 2.5
    assert round_trip[(slice(None), *INTERIOR)].abs().max() < 0.1


def test_integration_unfolds_a_velocity_that_folds_when_used_as_displacement() -> None:
    velocity = _velocity(amplitude=10.0, sigma=2.0)
    integrated = integrate_velocity(torch.tensor(velocity[None]), steps=7)[0].numpy()
    folded_direct = (jacobian_determinant(velocity) <= 0).mean()
    folded_integrated = (jacobian_determinant(integrated) <= 0).mean()
    assert folded_direct > 0.2
    assert folded_integrated < 0.002


def test_integration_keeps_translations_and_zero_steps_is_the_identity() -> None:
    shift = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64).view(1, 3, 1, 1, 1)
    velocity = shift.expand(1, 3, 6, 7, 8).clone()
    torch.testing.assert_close(integrate_velocity(velocity, steps=7), velocity)
    assert integrate_velocity(velocity, steps=0) is velocity
    with pytest.raises(ValueError, match="integration steps must be >= 0"):
        integrate_velocity(velocity, steps=-1)
