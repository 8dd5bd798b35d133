"""The heart with the seven MM-WHS structures and the great vessels, as implicit parts.

Layout (reference.md): the LV long axis points left, forward and down at about 45 degrees;
the myocardium (8-12 mm) wraps the LV cavity; the RV is a crescent against the septum; the
atria sit behind and above the ventricles; the aorta and pulmonary artery leave the base.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deeprs.phantom.painting import Part, intersect, make_part, subtract
from deeprs.phantom.shapes import Ellipsoid, HalfSpace, Tube, tube_along, unit
from deeprs.phantom.subject import Subject, Tissue

# Semi-axes (mm) at chamber scale 1, before the subject's own scale.
LV_CAVITY_RADII = np.array([42.0, 24.0, 24.0])
LA_RADII = np.array([27.0, 19.0, 22.0])
RA_RADII = np.array([24.0, 25.0, 27.0])
RV_HALF_LENGTH = 38.0
RV_WALL_MM = 3.5


@dataclass(frozen=True)
class HeartLayout:
    """Landmarks of one subject's heart in the heart frame (mm)."""

    long_axis: np.ndarray
    lv_axes: np.ndarray
    lv_centre: np.ndarray
    base: np.ndarray
    la_centre: np.ndarray
    ra_centre: np.ndarray
    aorta_path: np.ndarray


def heart_layout(subject: Subject) -> HeartLayout:
    """Where the chambers sit: LV axis left-forward-down, atria behind and above the base."""
    long_axis = unit([0.72, -0.5, -0.48])
    right_forward = np.array([-0.6, -1.0, 0.0])
    towards_rv = unit(right_forward - (right_forward @ long_axis) * long_axis)
    lv_centre = 12.0 * long_axis
    lv_length = LV_CAVITY_RADII[0] * subject.chamber_scale["lv"]
    base = lv_centre - 0.62 * lv_length * long_axis
    aortic_valve = base + np.array([-6.0, -4.0, 4.0])
    return HeartLayout(
        long_axis=long_axis,
        lv_axes=np.array([long_axis, towards_rv, np.cross(long_axis, towards_rv)]),
        lv_centre=lv_centre,
        base=base,
        la_centre=base + np.array([4.0, 24.0, 12.0]),
        ra_centre=base + np.array([-26.0, -3.0, 5.0]),
        aorta_path=aortic_valve
        + np.array([[0.0, 0.0, 0.0], [-6.0, -8.0, 25.0], [-10.0, -4.0, 50.0]]),
    )


def heart_parts(subject: Subject, layout: HeartLayout) -> list[Part]:
    """The heart and the vessels leaving it, in the heart frame, in painting order.

    The myocardium wraps the LV cavity (both cut open at the base); the RV is an ellipsoid
    beside the LV minus the LV's outer wall, hence a crescent against the septum; the aorta
    leaves the LV base and the pulmonary artery the RV outflow, each starting inside its
    ventricle so that the two touch.
    """
    scale = subject.chamber_scale
    axis, axes = layout.long_axis, layout.lv_axes
    cavity_radii = LV_CAVITY_RADII * scale["lv"]
    outer_radii = cavity_radii + np.array([0.8, 1.0, 1.0]) * subject.myocardium_mm
    lv_cavity = Ellipsoid(layout.lv_centre, axes, cavity_radii)
    lv_outer = Ellipsoid(layout.lv_centre, axes, outer_radii)
    lv_base_cut = HalfSpace(layout.base, -axis).field

    rv_radii = np.array([RV_HALF_LENGTH, 0.85 * outer_radii[1], 1.2 * outer_radii[2]]) * scale["rv"]
    rv_centre = layout.lv_centre - 6.0 * axis + 0.75 * outer_radii[1] * axes[1]
    rv = Ellipsoid(rv_centre, axes, rv_radii)
    rv_wall = Ellipsoid(rv_centre, axes, rv_radii + RV_WALL_MM)
    rv_base_cut = HalfSpace(rv_centre - 0.7 * rv_radii[0] * axis, -axis).field

    la = Ellipsoid(layout.la_centre, np.eye(3), LA_RADII * scale["la"])
    ra = Ellipsoid(layout.ra_centre, np.eye(3), RA_RADII * scale["ra"])
    ascending = tube_along(layout.aorta_path, subject.aorta_radius, 0.95 * subject.aorta_radius)

    pulmonary_valve = layout.base + np.array([6.0, -26.0, 8.0])
    bifurcation = pulmonary_valve + np.array([6.0, 22.0, 38.0])
    trunk_radius = subject.pulmonary_radius
    trunk = tube_along(
        np.array([pulmonary_valve, pulmonary_valve + [8.0, 4.0, 22.0], bifurcation]),
        trunk_radius,
        0.9 * trunk_radius,
    )
    branch_radius = 0.7 * trunk_radius
    branches = [
        bifurcation + np.array([[0.0, 0.0, 0.0], [22.0, 8.0, 0.0], [60.0, 20.0, -10.0]]),
        bifurcation + np.array([[0.0, 0.0, 0.0], [-25.0, 14.0, -4.0], [-70.0, 25.0, -15.0]]),
    ]
    veins = [
        layout.la_centre + np.outer([0.0, 1.0, 2.2], offset)
        for offset in (
            [26.0, 8.0, 10.0],
            [26.0, 8.0, -10.0],
            [-26.0, 8.0, 10.0],
            [-26.0, 8.0, -10.0],
        )
    ]
    return [
        make_part("rv wall", rv_wall, Tissue.MYOCARDIUM, intersect(rv_wall.field, rv_base_cut)),
        *[
            make_part("pulmonary vein", Tube(v, np.array([7.0, 6.0, 4.0])), Tissue.LEFT_BLOOD)
            for v in veins
        ],
        make_part("ra", ra, Tissue.RIGHT_BLOOD),
        make_part("la", la, Tissue.LEFT_BLOOD),
        *[
            make_part(
                "pulmonary branch",
                tube_along(b, branch_radius, 0.6 * branch_radius),
                Tissue.RIGHT_BLOOD,
            )
            for b in branches
        ],
        *[
            make_part("pa", Tube(b[:2], np.full(2, branch_radius)), Tissue.RIGHT_BLOOD)
            for b in branches
        ],
        make_part("pa", trunk, Tissue.RIGHT_BLOOD),
        make_part("aa", ascending, Tissue.LEFT_BLOOD),
        make_part(
            "rv",
            rv,
            Tissue.RIGHT_BLOOD,
            intersect(subtract(rv.field, lv_outer.field), rv_base_cut),
        ),
        make_part("myo", lv_outer, Tissue.MYOCARDIUM, intersect(lv_outer.field, lv_base_cut)),
        make_part("lv", lv_cavity, Tissue.LEFT_BLOOD, intersect(lv_cavity.field, lv_base_cut)),
    ]


def _descending_aorta_xy(subject: Subject) -> np.ndarray:
    """Left of and in front of the spine, whose place follows the depth of the chest."""
    return np.array([30.0, subject.cavity_half_axes()[1] - 36.0])


def vessel_parts(subject: Subject, layout: HeartLayout) -> list[Part]:
    """Aortic arch, descending aorta and venae cavae, in the body frame (not warped)."""
    to_body = subject.body_from_heart
    ascending_top = to_body(layout.aorta_path[-1])
    aorta_radius = subject.aorta_radius
    descending = _descending_aorta_xy(subject)
    top = ascending_top[2] + 10.0
    arch = tube_along(
        np.array(
            [
                to_body(layout.aorta_path[-2] * 0.3 + layout.aorta_path[-1] * 0.7),
                ascending_top + [6.0, 12.0, 20.0],
                [descending[0], descending[1] - 10.0, top + 12.0],
                [descending[0], descending[1], top - 20.0],
            ]
        ),
        0.95 * aorta_radius,
        0.85 * aorta_radius,
    )
    descending_aorta = Tube(
        np.array([[*descending, top - 20.0], [*descending, -400.0]]),
        np.full(2, 0.85 * aorta_radius),
    )
    ra_centre = to_body(layout.ra_centre)
    superior = Tube(
        np.array([ra_centre + [-2.0, -4.0, 0.0], ra_centre + [-2.0, -4.0, 400.0]]), np.full(2, 10.0)
    )
    inferior = Tube(
        np.array([ra_centre + [0.0, 6.0, 0.0], ra_centre + [0.0, 6.0, -400.0]]), np.full(2, 12.0)
    )
    return [
        make_part("aortic arch", arch, Tissue.LEFT_BLOOD),
        make_part("descending aorta", descending_aorta, Tissue.LEFT_BLOOD),
        make_part("superior vena cava", superior, Tissue.RIGHT_BLOOD),
        make_part("inferior vena cava", inferior, Tissue.RIGHT_BLOOD),
    ]


def heart_warp(subject: Subject) -> Callable[[np.ndarray], np.ndarray]:
    """A smooth random displacement (a few long sine waves), fading away from the heart."""

    def warp(points: np.ndarray) -> np.ndarray:
        taper = np.exp(
            -(points[0] ** 2 + points[1] ** 2 + points[2] ** 2) / np.float32(2 * 90.0**2)
        )
        warped = points.copy()
        for amplitude, vector, phase in zip(
            subject.wave_amplitudes, subject.wave_vectors, subject.wave_phases, strict=True
        ):
            wave = (
                np.sin(sum(np.float32(vector[i]) * points[i] for i in range(3)) + np.float32(phase))
                * taper
            )
            for i in range(3):
                warped[i] += np.float32(amplitude[i]) * wave
        return warped

    return warp
