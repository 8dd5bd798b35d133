"""The spatial transformer W: the one place that turns displacements into sampling grids.

Conventions (used by every caller, stated only here):

* Tensors are ``(N, C, D, H, W)`` with ``D, H, W = z, y, x`` of the array grid.
* A displacement ``u`` has shape ``(N, 3, D, H, W)``, is measured in **voxels** of that
  grid, and its channels are ordered ``(d, h, w)`` = ``(z, y, x)``.
* Warping pulls: ``warped(p) = image(p + u(p))`` for every voxel ``p``.
* Voxel coordinates are normalised to ``[-1, 1]`` with ``align_corners=True``: voxel ``0``
  maps to ``-1`` and voxel ``size - 1`` to ``+1``, so voxel centres are sample points and no
  half-voxel shift appears. ``grid_sample`` wants its last axis in ``(x, y, z)`` order, so
  the channels are reversed when the grid is built.
* Sampling runs in at least float32 with autocast switched off: a bf16 coordinate near
  voxel 100 has a resolution of 0.5 voxel, which would wreck the warp under mixed precision.
* Points that fall outside the volume take the value of the nearest border voxel
  (``padding_mode="border"``). The images are crops of a larger body, so zero padding would
  draw an artificial black frame that the similarity loss and the discriminator could
  learn from; with border padding a warped one-hot label map still sums to one everywhere.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

INTERPOLATION_MODES = ("bilinear", "nearest")
PADDING_MODES = ("border", "zeros", "reflection")


@functools.lru_cache(maxsize=32)
def identity_grid(
    shape: tuple[int, int, int], device: torch.device | str, dtype: torch.dtype
) -> torch.Tensor:
    """Voxel coordinates ``(1, 3, D, H, W)`` with channels ``(d, h, w)``.

    Cached per (shape, device, dtype) because every training step asks for the same grid;
    the returned tensor is shared, so treat it as read-only.
    """
    axes = [torch.arange(size, device=device, dtype=dtype) for size in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def _check_pair(image: torch.Tensor, displacement: torch.Tensor) -> None:
    if image.dim() != 5:
        raise ValueError(f"image must be (N, C, D, H, W), got shape {tuple(image.shape)}")
    if displacement.dim() != 5 or displacement.shape[1] != 3:
        raise ValueError(
            f"displacement must be (N, 3, D, H, W), got shape {tuple(displacement.shape)}"
        )
    if image.shape[2:] != displacement.shape[2:] or image.shape[0] != displacement.shape[0]:
        raise ValueError(
            f"image {tuple(image.shape)} and displacement {tuple(displacement.shape)} "
            "must share batch size and spatial shape"
        )


def _working_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 if a floating input is float64 (never bf16/fp16 for coordinates)."""
    dtype = torch.float32
    for tensor in tensors:
        if torch.is_floating_point(tensor):
            dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def sampling_grid(displacement: torch.Tensor) -> torch.Tensor:
    """The ``grid_sample`` grid ``(N, D, H, W, 3)`` (x, y, z in [-1, 1]) for ``p + u(p)``."""
    shape = tuple(int(size) for size in displacement.shape[2:])
    dtype = _working_dtype(displacement)
    locations = identity_grid(shape, displacement.device, dtype) + displacement.to(dtype)
    scale = torch.tensor(
        [2.0 / max(size - 1, 1) for size in shape], device=displacement.device, dtype=dtype
    ).view(1, 3, 1, 1, 1)
    normalised = locations * scale - 1.0
    return normalised.permute(0, 2, 3, 4, 1).flip(-1)


def warp(
    image: torch.Tensor,
    displacement: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """Resample ``image`` at ``p + u(p)``.

    Floating images come back in float32 (float64 if an input is float64), whatever the
    autocast state; integer label maps keep their dtype.

    Args:
        image: ``(N, C, D, H, W)`` float tensor.
        displacement: ``(N, 3, D, H, W)`` in voxels, channels ``(d, h, w)``.
        mode: ``"bilinear"`` (trilinear in 3D) for images and soft labels, ``"nearest"``
            for integer label maps in evaluation.
        padding_mode: what points outside the volume see (``"border"`` by default).
    """
    if mode not in INTERPOLATION_MODES:
        raise ValueError(f"mode must be one of {INTERPOLATION_MODES}, got {mode!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    _check_pair(image, displacement)
    integer_input = not torch.is_floating_point(image)
    if integer_input and mode != "nearest":
        raise ValueError("integer images (label maps) can only be warped with mode='nearest'")
    dtype = _working_dtype(image, displacement)
    with torch.autocast(device_type=image.device.type, enabled=False):
        grid = sampling_grid(displacement).to(dtype)
        warped = F.grid_sample(
            image.to(dtype), grid, mode=mode, padding_mode=padding_mode, align_corners=True
        )
    return warped.round().to(image.dtype) if integer_input else warped


def integrate_velocity(velocity: torch.Tensor, steps: int) -> torch.Tensor:
    """The displacement of ``exp(v)``: a stationary velocity field integrated by scaling and
    squaring (Arsigny et al. 2006; VoxelMorph's diffeomorphic variant, Dalca et al. 2018).

    ``v`` is divided by ``2**steps`` (small enough that ``x + v / 2**steps`` does not fold),
    then the map is composed with itself ``steps`` times: ``u <- u + u o (x + u)``. The
    result folds far less than ``v`` used directly; on a discrete grid it is not guaranteed
    to be fold-free. ``steps = 0`` returns ``v`` unchanged. Units and channel order are
    those of :func:`warp`; the result is float32 (float64 for float64 input).
    """
    if steps < 0:
        raise ValueError(f"integration steps must be >= 0, got {steps}")
    if steps == 0:
        return velocity
    displacement = velocity.to(_working_dtype(velocity)) / 2**steps
    for _ in range(steps):
        displacement = displacement + warp(displacement, displacement)
    return displacement


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float one-hot ``(N, num_classes, D, H, W)`` of integer labels ``(N, 1, D, H, W)``.

    ``num_classes`` counts every class including background (``K + 1`` for ``K``
    structures), as in :func:`torch.nn.functional.one_hot`.
    """
    if labels.dim() != 5 or labels.shape[1] != 1:
        raise ValueError(f"labels must be (N, 1, D, H, W), got shape {tuple(labels.shape)}")
    if torch.is_floating_point(labels):
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels hold values in [{int(labels.min())}, {int(labels.max())}] but "
            f"num_classes={num_classes} allows only 0..{num_classes - 1}"
        )
    encoded = F.one_hot(labels[:, 0].long(), num_classes)
    return encoded.permute(0, 4, 1, 2, 3).to(torch.float32)


def warp_labels_onehot(
    labels: torch.Tensor, displacement: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Soft one-hot ``(N, num_classes, D, H, W)`` of labels warped trilinearly.

    Used inside the losses: unlike nearest-neighbour warping it is differentiable with
    respect to the displacement, and each voxel's class probabilities still sum to one.
    ``num_classes`` includes background (``K + 1``).
    """
    return warp(one_hot(labels, num_classes), displacement, mode="bilinear")


def jacobian_determinant(displacement: torch.Tensor, differences: str) -> torch.Tensor:
    """``det(I + grad u)`` at every voxel, shape ``(N, D, H, W)``; unitless.

    ``differences``: ``"central"`` (one-sided at the borders, as ``np.gradient``) or
    ``"forward"`` (the last difference repeated at the far border). An axis of length 1 has
    zero derivative.
    """
    if displacement.dim() != 5 or displacement.shape[1] != 3:
        raise ValueError(f"displacement must be (N, 3, D, H, W), got {tuple(displacement.shape)}")
    if differences not in ("central", "forward"):
        raise ValueError(f"differences must be 'central' or 'forward', got {differences!r}")
    derivatives = []
    for dim in (2, 3, 4):
        if displacement.shape[dim] == 1:
            derivatives.append(torch.zeros_like(displacement))
        elif differences == "central":
            derivatives.append(torch.gradient(displacement, dim=dim)[0])
        else:
            step = displacement.diff(dim=dim)
            last = step.narrow(dim, step.shape[dim] - 1, 1)
            derivatives.append(torch.cat((step, last), dim=dim))
    # j[i][k] = d(x + u)_i / d x_k
    j = [[derivatives[k][:, i] + (1.0 if i == k else 0.0) for k in range(3)] for i in range(3)]
    return (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
        + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0])
    )
