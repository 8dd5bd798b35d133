"""Implicit shapes as signed-distance-like fields: negative inside, about millimetres outside.

Fields are evaluated on coordinate arrays ``(3, ...)`` in the shape's frame. Being smooth and
defined in millimetres, the anatomy built from them does not depend on the voxel grid, and a
field value of ``d`` marks a shell about ``d`` mm away (used for fat around the heart).
Combine fields with ``numpy.minimum`` (union) and ``numpy.maximum`` (intersection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Shape(Protocol):
    """Anything with a field and a bounding box (both in the shape's frame, mm)."""

    def field(self, points: np.ndarray) -> np.ndarray: ...

    def bounds(self) -> tuple[np.ndarray, np.ndarray]: ...


def unit(vector: np.ndarray | list[float]) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid with orthonormal ``axes`` (rows) and semi-axis lengths ``radii`` (mm)."""

    centre: np.ndarray
    axes: np.ndarray
    radii: np.ndarray

    def local(self, points: np.ndarray) -> list[np.ndarray]:
        """Coordinates along the ellipsoid's own axes."""
        shifted = [points[i] - np.float32(self.centre[i]) for i in range(3)]
        return [sum(np.float32(self.axes[k, i]) * shifted[i] for i in range(3)) for k in range(3)]

    def field(self, points: np.ndarray) -> np.ndarray:
        """(normalised radius - 1) x smallest radius: exact on the short axis, smooth elsewhere."""
        along = self.local(points)
        squared = sum((along[k] / np.float32(self.radii[k])) ** 2 for k in range(3))
        return (np.sqrt(squared) - 1.0) * np.float32(self.radii.min())

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        extent = np.sqrt(((self.axes * self.radii[:, None]) ** 2).sum(axis=0))
        return self.centre - extent, self.centre + extent


@dataclass(frozen=True)
class HalfSpace:
    """Points with ``normal . (p - point) <= 0``, i.e. behind a plane through ``point``."""

    point: np.ndarray
    normal: np.ndarray

    def field(self, points: np.ndarray) -> np.ndarray:
        return sum(
            np.float32(self.normal[i]) * (points[i] - np.float32(self.point[i])) for i in range(3)
        )


@dataclass(frozen=True)
class Tube:
    """A tube along a polyline whose radius varies linearly between its vertices (mm)."""

    vertices: np.ndarray
    radii: np.ndarray

    def field(self, points: np.ndarray) -> np.ndarray:
        result: np.ndarray | None = None
        for start, end, r_start, r_end in zip(
            self.vertices[:-1], self.vertices[1:], self.radii[:-1], self.radii[1:], strict=True
        ):
            direction = end - start
            length_squared = float(direction @ direction)
            relative = [points[i] - np.float32(start[i]) for i in range(3)]
            along = sum(relative[i] * np.float32(direction[i] / length_squared) for i in range(3))
            np.clip(along, 0.0, 1.0, out=along)
            distance = np.sqrt(
                sum((relative[i] - along * np.float32(direction[i])) ** 2 for i in range(3))
            )
            segment = distance - (np.float32(r_start) + along * np.float32(r_end - r_start))
            result = segment if result is None else np.minimum(result, segment)
        assert result is not None
        return result

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = float(self.radii.max())
        return self.vertices.min(axis=0) - reach, self.vertices.max(axis=0) + reach


def smooth_path(control_points: np.ndarray, samples_per_span: int = 4) -> np.ndarray:
    """A Catmull-Rom curve through ``control_points`` (K, 3), sampled as a polyline."""
    points = np.asarray(control_points, dtype=np.float64)
    padded = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    samples = [points[0]]
    for k in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[k - 1 : k + 3]
        for t in np.linspace(0.0, 1.0, samples_per_span + 1)[1:]:
            samples.append(
                0.5
                * (
                    2 * p1
                    + (p2 - p0) * t
                    + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                    + (3 * p1 - p0 - 3 * p2 + p3) * t**3
                )
            )
    return np.array(samples)


def tube_along(control_points: np.ndarray, radius_start: float, radius_end: float) -> Tube:
    """A smooth tube through ``control_points`` tapering linearly from start to end radius."""
    vertices = smooth_path(control_points)
    return Tube(vertices, np.linspace(radius_start, radius_end, len(vertices)))


@dataclass(frozen=True)
class Cuboid:
    """An axis-aligned box given by its centre and half sizes (mm); Chebyshev-style field."""

    centre: np.ndarray
    half_sizes: np.ndarray

    def field(self, points: np.ndarray) -> np.ndarray:
        return np.max(
            [
                np.abs(points[i] - np.float32(self.centre[i])) - np.float32(self.half_sizes[i])
                for i in range(3)
            ],
            axis=0,
        )

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.centre - self.half_sizes, self.centre + self.half_sizes


def vertical_tube(
    x: float, y: float, radius: float, z_low: float = -400.0, z_high: float = 400.0
) -> Tube:
    """A straight tube along the body's z axis (spine, airways, venae cavae)."""
    return Tube(np.array([[x, y, z_low], [x, y, z_high]]), np.array([radius, radius]))


def periodic_bands(
    period_mm: float, thickness_mm: float, phase: float
) -> Callable[[np.ndarray], np.ndarray]:
    """Slabs of ``thickness_mm`` repeating every ``period_mm`` along z (intervertebral discs)."""

    def field(points: np.ndarray) -> np.ndarray:
        offset = (points[2] / np.float32(period_mm) + np.float32(phase)) % 1.0
        return np.abs(offset - 0.5) * np.float32(period_mm) - np.float32(thickness_mm / 2)

    return field
