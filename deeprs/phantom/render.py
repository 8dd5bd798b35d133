"""Render one subject: paint the chest and the heart, then blur and add noise in HU.

The image is the tissue map looked up in the subject's HU table, blurred like a thick slice
(partial volume) and made noisy; the label is painted from the same fields and never blurred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from deeprs.data.geometry import Grid
from deeprs.phantom.chest import paint_chest
from deeprs.phantom.heart import heart_layout, heart_parts, heart_warp, vessel_parts
from deeprs.phantom.painting import paint_parts
from deeprs.phantom.subject import Subject, Tissue


@dataclass(frozen=True)
class Rendered:
    """A rendered case: HU image (int16), MM-WHS label (int16) and tissue map (uint8), all (z, y, x)."""

    image: np.ndarray
    label: np.ndarray
    tissue: np.ndarray


def render(grid: Grid, subject: Subject, rng: np.random.Generator) -> Rendered:
    """Paint the subject on ``grid``, then blur (partial volume) and add noise in HU."""
    tissue = np.zeros(grid.shape_zyx, dtype=np.uint8)
    label = np.zeros(grid.shape_zyx, dtype=np.int16)
    layout = heart_layout(subject)
    paint_chest(tissue, grid, subject, rng)
    body_from_world = subject.world_from_body.inverse()
    paint_parts(tissue, label, grid, body_from_world, vessel_parts(subject, layout))
    heart_from_world = subject.body_from_heart.inverse().after(body_from_world)
    warp_margin = 2.0 * float(np.abs(subject.wave_amplitudes).sum(axis=0).max())
    paint_parts(
        tissue,
        label,
        grid,
        heart_from_world,
        heart_parts(subject, layout),
        warp=heart_warp(subject),
        warp_margin_mm=warp_margin,
        fat_mm=8.0,
    )
    lookup = np.array([subject.hu[kind] for kind in Tissue], dtype=np.float32)
    image = lookup[tissue]
    sigma_voxels = [
        mm / s for mm, s in zip(subject.blur_mm[::-1], grid.spacing_xyz[::-1], strict=True)
    ]
    image = ndimage.gaussian_filter(image, sigma_voxels, truncate=3.0)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(subject.noise_hu)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return Rendered(image=image, label=label, tissue=tissue)
