"""Painting implicit parts into a tissue map and a label map, in priority order.

A later part wins where two overlap (the myocardium over the right ventricle, the LV cavity
over the myocardium). Each part's field is evaluated only on the block of voxels around its
bounding box, which keeps a case fast however large the field of view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deeprs.data.geometry import Affine, Box, Grid
from deeprs.phantom.shapes import Shape
from deeprs.phantom.subject import MMWHS_LABELS, Tissue

Field = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Part:
    """A piece of anatomy: its field and bounding box in its frame, tissue and label value."""

    name: str
    field: Field
    bounds: tuple[np.ndarray, np.ndarray]
    tissue: Tissue
    label: int = 0


def make_part(name: str, shape: Shape, tissue: Tissue, field: Field | None = None) -> Part:
    """A part named after an MM-WHS structure carries its label value; other names carry 0."""
    return Part(name, field or shape.field, shape.bounds(), tissue, MMWHS_LABELS.get(name, 0))


def intersect(first: Field, second: Field) -> Field:
    return lambda points: np.maximum(first(points), second(points))


def subtract(first: Field, second: Field) -> Field:
    return lambda points: np.maximum(first(points), -second(points))


def _corners(bounds: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    low, high = bounds
    return np.array([[(low, high)[k >> i & 1][i] for i in range(3)] for k in range(8)])


def _union(boxes: list[Box]) -> Box:
    return tuple(
        slice(min(box[axis].start for box in boxes), max(box[axis].stop for box in boxes))
        for axis in range(3)
    )


def paint_parts(
    tissue: np.ndarray,
    label: np.ndarray | None,
    grid: Grid,
    frame_from_world: Affine,
    parts: list[Part],
    warp: Callable[[np.ndarray], np.ndarray] | None = None,
    warp_margin_mm: float = 0.0,
    fat_mm: float = 0.0,
) -> None:
    """Paint ``parts`` in order; each field is evaluated only on its part's block of voxels.

    With ``fat_mm``, lung within that distance of any part first becomes fat (the fat
    around the heart that keeps the lungs off it).
    """
    world_from_frame = frame_from_world.inverse()
    margin = warp_margin_mm + fat_mm + max(grid.spacing_xyz)
    boxes = [grid.box_around(world_from_frame(_corners(part.bounds)), margin) for part in parts]
    present = [(part, box) for part, box in zip(parts, boxes, strict=True) if box is not None]
    if not present:
        return
    outer = _union([box for _, box in present])
    coordinates = grid.coordinates(frame_from_world, outer)
    if warp is not None:
        coordinates = warp(coordinates)
    fields = []
    for part, box in present:
        inner = tuple(
            slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer, strict=True)
        )
        fields.append((part, box, part.field(coordinates[(slice(None), *inner)])))
    if fat_mm > 0:
        for _, box, field in fields:
            block = tissue[box]
            block[(field <= fat_mm) & ((block == Tissue.LUNG) | (block == Tissue.LUNG_VESSEL))] = (
                Tissue.FAT
            )
    for part, box, field in fields:
        inside = field <= 0
        tissue[box][inside] = part.tissue
        if label is not None:
            label[box][inside] = part.label
