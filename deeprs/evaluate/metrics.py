"""Per-structure overlap and surface metrics, and the folding of a displacement field.

Arrays are ``(z, y, x)`` class maps (0 = background) and ``labels`` maps structure names to
class indices, as in the manifest. Definitions in ``docs/methods.md`` ("Evaluation"):
a structure absent from both masks has Dice NaN (not 0), and HD95 is NaN when it is absent
from either, so that averages over cases are not pulled down by structures nobody drew.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from deeprs.nets import spatial


def _check_same_shape(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")


def dice(pred: np.ndarray, target: np.ndarray, labels: Mapping[str, int]) -> dict[str, float]:
    """Dice 2|A∩B| / (|A| + |B|) per structure, in [0, 1]; NaN when absent from both."""
    _check_same_shape(pred, target)
    scores = {}
    for name, index in labels.items():
        predicted, expected = pred == index, target == index
        total = int(predicted.sum()) + int(expected.sum())
        overlap = int(np.logical_and(predicted, expected).sum())
        scores[name] = 2.0 * overlap / total if total else float("nan")
    return scores


def mean_present(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN (a structure or sample with nothing to score),
    as the tables average; NaN when none is."""
    present = [value for value in values if not np.isnan(value)]
    return float(np.mean(present)) if present else float("nan")


def mean_dice(scores: Mapping[str, float]) -> float:
    """Mean of per-structure Dice over the structures present in either mask (one sample)."""
    return mean_present(scores.values())


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a 6-neighbour outside the mask (the image border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Box of ``mask`` grown by one voxel, so that erosion inside it equals erosion outside."""
    box = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other_axes))
        box.append(slice(max(present[0] - 1, 0), present[-1] + 2))
    return tuple(box)


def _distance_to(surface: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Distance in mm from every voxel to the nearest voxel of ``surface``."""
    return ndimage.distance_transform_edt(~surface, sampling=spacing_zyx)


def surface_distance_maps(
    label_map: np.ndarray, labels: Mapping[str, int], spacing_zyx: Sequence[float]
) -> dict[str, np.ndarray | None]:
    """Per structure, the distance map to its surface on the whole grid (None when absent).

    Computed once per fixed case and passed to :func:`hd95` as ``target_maps``, it halves
    the work of scoring the many registration pairs that share a fixed image.
    """
    maps: dict[str, np.ndarray | None] = {}
    for name, index in labels.items():
        mask = label_map == index
        maps[name] = _distance_to(_surface(mask), spacing_zyx) if mask.any() else None
    return maps


def _hd95_of_masks(
    predicted: np.ndarray,
    expected: np.ndarray,
    spacing_zyx: Sequence[float],
    target_map: np.ndarray | None,
) -> float:
    # Distances between points inside the box do not depend on the crop, so crop for speed.
    box = _bounding_box(predicted | expected)
    surface_pred, surface_true = _surface(predicted[box]), _surface(expected[box])
    to_true = target_map[box] if target_map is not None else _distance_to(surface_true, spacing_zyx)
    to_pred = _distance_to(surface_pred, spacing_zyx)
    return float(
        max(np.percentile(to_true[surface_pred], 95), np.percentile(to_pred[surface_true], 95))
    )


def hd95(
    pred: np.ndarray,
    target: np.ndarray,
    labels: Mapping[str, int],
    spacing_zyx: Sequence[float],
    target_maps: Mapping[str, np.ndarray | None] | None = None,
) -> dict[str, float]:
    """95th-percentile Hausdorff distance in mm per structure; NaN if absent from either mask.

    Surfaces are the mask voxels with a face neighbour outside the mask; the result is the
    larger of the two directed 95th percentiles of surface-to-surface distances, which is
    MONAI's ``compute_hausdorff_distance(percentile=95)``. ``target_maps`` are the
    :func:`surface_distance_maps` of ``target``, when already at hand.
    """
    _check_same_shape(pred, target)
    if len(spacing_zyx) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing_zyx)} does not match {pred.ndim} axes")
    distances = {}
    for name, index in labels.items():
        predicted, expected = pred == index, target == index
        if not predicted.any() or not expected.any():
            distances[name] = float("nan")
        else:
            target_map = target_maps[name] if target_maps is not None else None
            distances[name] = _hd95_of_masks(predicted, expected, spacing_zyx, target_map)
    return distances


def jacobian_determinant(displacement_voxels: np.ndarray) -> np.ndarray:
    """det of the Jacobian of x + u(x) at every voxel, by central differences, in float64.

    ``displacement_voxels`` is ``(3, D, H, W)`` in voxels with channels ``(d, h, w)``; the
    determinant is unitless, so it is the same in voxel or mm units for any spacing. At the
    border the differences are one-sided; an axis of length 1 has zero derivative. The same
    determinant as the folding penalty's (``deeprs.nets.spatial.jacobian_determinant``).
    """
    if displacement_voxels.ndim != 4 or displacement_voxels.shape[0] != 3:
        raise ValueError(f"displacement must be (3, D, H, W), got {displacement_voxels.shape}")
    field = torch.from_numpy(np.asarray(displacement_voxels, dtype=np.float64))
    return spatial.jacobian_determinant(field[None], "central")[0].numpy()


def nonpositive_jacobian_percent(displacement_voxels: np.ndarray) -> float:
    """Percentage of voxels where the deformation folds (det of the Jacobian <= 0)."""
    return float(100.0 * np.mean(jacobian_determinant(displacement_voxels) <= 0))
