"""The chest around the heart: wall, lungs with vessels, diaphragm, mediastinum, bones, airways.

All in the body frame (x left, y posterior, z superior, mm). The body and the thoracic
cavity are elliptic cylinders; the lungs fill the cavity above a two-domed diaphragm (liver
below) except the mediastinum; lung vessels are the crossings of the near-zero sets of two
smooth random fields, thick near the hila and thinning outwards; ribs are bands in the
chest wall sloping down towards the front.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from deeprs.data.geometry import Grid
from deeprs.phantom.painting import Part, intersect, make_part, paint_parts
from deeprs.phantom.shapes import Cuboid, periodic_bands, vertical_tube
from deeprs.phantom.subject import Subject, Tissue

VESSEL_STEP_MM = 8.0
RIB_PERIOD_MM = 28.0
RIB_HEIGHT_MM = 10.0


def spine_y(subject: Subject) -> float:
    """Centre of the vertebral bodies, just inside the back of the thoracic cavity."""
    return subject.cavity_half_axes()[1] - 20.0


def chest_parts(subject: Subject) -> list[Part]:
    """Spine, sternum, oesophagus and trachea, in painting order (body frame)."""
    vertebra_y = spine_y(subject)
    canal_y = vertebra_y + 27.0
    cavity_depth = subject.cavity_half_axes()[1]
    heart_z = float(subject.body_from_heart.offset[2])
    vertebra = vertical_tube(0.0, vertebra_y, 17.0)
    marrow = vertical_tube(0.0, vertebra_y, 14.5)
    levels = periodic_bands(30.0, 6.0, subject.rib_phase)
    processes = Cuboid(np.array([0.0, canal_y - 2.0, 0.0]), np.array([32.0, 5.0, 400.0]))
    spinous = Cuboid(np.array([0.0, canal_y + 12.0, 0.0]), np.array([4.0, 11.0, 400.0]))
    sternum = Cuboid(
        np.array([0.0, -cavity_depth - 2.0, heart_z + 200.0]), np.array([14.0, 6.0, 240.0])
    )
    sternum_marrow = Cuboid(sternum.centre, sternum.half_sizes - 3.0)
    oesophagus = vertical_tube(6.0, vertebra_y - 30.0, 8.0)
    trachea_wall = vertical_tube(0.0, vertebra_y - 40.0, 11.0, z_low=heart_z + 75.0)
    trachea_lumen = vertical_tube(0.0, vertebra_y - 40.0, 9.0, z_low=heart_z + 75.0)
    between_discs = lambda points: 7.0 - levels(points)  # noqa: E731 (the mid-vertebra slabs)
    part = make_part

    return [
        part("vertebral body", vertebra, Tissue.CORTICAL_BONE),
        part("vertebral marrow", marrow, Tissue.MARROW),
        part("disc", vertebra, Tissue.SOFT_TISSUE, intersect(vertebra.field, levels)),
        part(
            "transverse processes",
            processes,
            Tissue.CORTICAL_BONE,
            intersect(processes.field, between_discs),
        ),
        part("vertebral arch", vertical_tube(0.0, canal_y, 12.0), Tissue.CORTICAL_BONE),
        part("spinous process", spinous, Tissue.CORTICAL_BONE),
        part("spinal canal", vertical_tube(0.0, canal_y, 7.0), Tissue.SOFT_TISSUE),
        part("sternum", sternum, Tissue.CORTICAL_BONE),
        part("sternal marrow", sternum_marrow, Tissue.MARROW),
        part("oesophagus", oesophagus, Tissue.SOFT_TISSUE),
        part("trachea wall", trachea_wall, Tissue.SOFT_TISSUE),
        part("trachea", trachea_lumen, Tissue.AIR),
    ]


def _upsample_axis(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Linear interpolation of ``array`` to ``size`` samples along ``axis``, end points aligned."""
    positions = np.linspace(0.0, array.shape[axis] - 1.0, size)
    low = np.minimum(positions.astype(int), array.shape[axis] - 2)
    shape = [1] * array.ndim
    shape[axis] = size
    fraction = (positions - low).astype(np.float32).reshape(shape)
    return (
        np.take(array, low, axis=axis) * (1 - fraction)
        + np.take(array, low + 1, axis=axis) * fraction
    )


def smooth_noise(grid: Grid, rng: np.random.Generator, step_mm: float) -> np.ndarray:
    """A smooth random field of unit spread on the grid, made on a coarse grid and upsampled."""
    coarse_shape = [
        max(2, round(n * s / step_mm))
        for n, s in zip(grid.shape_zyx, grid.spacing_xyz[::-1], strict=True)
    ]
    field = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32), 1.2)
    field /= field.std()
    for axis in (2, 1, 0):
        field = _upsample_axis(field, axis, grid.shape_zyx[axis])
    return field


def paint_chest(tissue: np.ndarray, grid: Grid, subject: Subject, rng: np.random.Generator) -> None:
    """Paint everything but the heart and great vessels into ``tissue`` (z, y, x)."""
    body_from_world = subject.world_from_body.inverse()
    x, y, z = grid.coordinates(body_from_world, grid.full_box())
    x_squared, y_squared = x * x, y * y
    cavity_width, cavity_depth = subject.cavity_half_axes()

    def within(grow_mm: float) -> np.ndarray:
        """Inside the cavity's ellipse grown by ``grow_mm``."""
        width, depth = cavity_width + grow_mm, cavity_depth + grow_mm
        return x_squared * np.float32(1 / width**2) + y_squared * np.float32(1 / depth**2) <= 1.0

    wall = subject.fat_mm + subject.muscle_mm
    tissue[within(wall)] = Tissue.FAT
    tissue[within(subject.muscle_mm)] = Tissue.MUSCLE
    cavity = within(0.0)
    diaphragm = (
        np.float32(subject.diaphragm_z)
        + 10.0 * np.tanh(-x / np.float32(40.0))
        - x_squared / np.float32(500.0)
        - np.float32(0.25) * y
    )
    above = z > diaphragm
    lung = cavity & above
    tissue[lung] = Tissue.LUNG
    tissue[cavity & ~above] = Tissue.SOFT_TISSUE

    lung_voxels = np.flatnonzero(lung)
    hila = subject.body_from_heart.offset + np.array([[-45.0, 20.0, 20.0], [45.0, 20.0, 20.0]])
    lx, ly, lz = (axis.ravel()[lung_voxels] for axis in (x, y, z))
    hilum_mm = np.sqrt(
        np.minimum(*[(lx - h[0]) ** 2 + (ly - h[1]) ** 2 + (lz - h[2]) ** 2 for h in hila])
    )
    width = np.float32(0.38) * np.clip(1.3 - hilum_mm / np.float32(110.0), 0.3, 1.0)
    first, second = (smooth_noise(grid, rng, VESSEL_STEP_MM).ravel()[lung_voxels] for _ in range(2))
    vessel_voxels = lung_voxels[(np.abs(first) < width) & (np.abs(second) < width)]
    tissue.ravel()[vessel_voxels] = Tissue.LUNG_VESSEL

    mediastinum = (
        above
        & cavity
        & (np.abs(x - 4.0) < 26.0)
        & (y > -cavity_depth + 25.0)
        & (y < spine_y(subject))
    )
    tissue[mediastinum] = Tissue.FAT

    layer = np.flatnonzero(
        within(9.0) & ~within(1.0) & (z > diaphragm - 40.0) & ~((np.abs(x) < 30.0) & (y < 0))
    )
    rx, ry, rz = (axis.ravel()[layer] for axis in (x, y, z))
    band_mm = (
        np.abs(((rz - 0.35 * ry) / RIB_PERIOD_MM + subject.rib_phase) % 1.0 - 0.5) * RIB_PERIOD_MM
    )
    ribs = band_mm < RIB_HEIGHT_MM / 2
    tissue.ravel()[layer[ribs]] = Tissue.CORTICAL_BONE
    rib_depth = (rx**2 / (cavity_width + 5.0) ** 2 + ry**2 / (cavity_depth + 5.0) ** 2) ** 0.5
    core = (
        ribs
        & (band_mm < RIB_HEIGHT_MM / 2 - 2.0)
        & (np.abs(rib_depth - 1.0) * min(cavity_width, cavity_depth) < 2.0)
    )
    tissue.ravel()[layer[core]] = Tissue.MARROW

    paint_parts(tissue, None, grid, body_from_world, chest_parts(subject))
