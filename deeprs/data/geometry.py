"""The voxel grid of a phantom volume in physical millimetres, and affine maps between frames.

World coordinates are ITK/DICOM LPS millimetres (x to the patient's left, y posterior,
z superior); the volume's direction is the identity and its origin puts the grid's centre at
(0, 0, 0). Arrays are ``(z, y, x)`` as SimpleITK returns them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Box = tuple[slice, slice, slice]
"""Index slices ``(z, y, x)`` of a sub-block of the grid."""


def rotation_matrix(angles_deg: np.ndarray | list[float]) -> np.ndarray:
    """Rotation about x, then y, then z (angles in degrees), as a 3x3 matrix."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Affine:
    """The map ``p -> matrix @ p + offset`` between two frames (points in the last axis)."""

    matrix: np.ndarray
    offset: np.ndarray

    @classmethod
    def similarity(cls, rotation: np.ndarray, scale: float, translation: np.ndarray) -> Affine:
        """``p -> translation + scale * rotation @ p``: a pose that places a frame in its parent."""
        return cls(scale * np.asarray(rotation, float), np.asarray(translation, float))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, float) @ self.matrix.T + self.offset

    def inverse(self) -> Affine:
        inverse = np.linalg.inv(self.matrix)
        return Affine(inverse, -inverse @ self.offset)

    def after(self, first: Affine) -> Affine:
        """The composition ``self(first(p))``."""
        return Affine(self.matrix @ first.matrix, self.matrix @ first.offset + self.offset)


@dataclass(frozen=True)
class Grid:
    """A volume of ``shape_xyz`` voxels of ``spacing_xyz`` mm, centred on the world origin."""

    shape_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return (self.shape_xyz[2], self.shape_xyz[1], self.shape_xyz[0])

    @property
    def origin_xyz(self) -> tuple[float, float, float]:
        """World position of voxel (0, 0, 0): the grid's centre then lies at the world origin."""
        return tuple(
            -(n - 1) / 2.0 * s for n, s in zip(self.shape_xyz, self.spacing_xyz, strict=True)
        )

    @property
    def field_of_view_mm(self) -> tuple[float, float, float]:
        return tuple(n * s for n, s in zip(self.shape_xyz, self.spacing_xyz, strict=True))

    def axis_mm(self, axis: int) -> np.ndarray:
        """World coordinates (mm) of the voxel centres along x (0), y (1) or z (2)."""
        return self.origin_xyz[axis] + self.spacing_xyz[axis] * np.arange(self.shape_xyz[axis])

    def box_around(self, world_points: np.ndarray, margin_mm: float = 0.0) -> Box | None:
        """The smallest block of voxels holding ``world_points`` grown by ``margin_mm``; None if outside."""
        points = np.asarray(world_points, float).reshape(-1, 3)
        spacing = np.asarray(self.spacing_xyz)
        origin = np.asarray(self.origin_xyz)
        low = np.floor((points.min(axis=0) - margin_mm - origin) / spacing).astype(int)
        high = np.ceil((points.max(axis=0) + margin_mm - origin) / spacing).astype(int) + 1
        low = np.maximum(low, 0)
        high = np.minimum(high, self.shape_xyz)
        if np.any(high <= low):
            return None
        return (slice(low[2], high[2]), slice(low[1], high[1]), slice(low[0], high[0]))

    def full_box(self) -> Box:
        return (
            slice(0, self.shape_xyz[2]),
            slice(0, self.shape_xyz[1]),
            slice(0, self.shape_xyz[0]),
        )

    def coordinates(self, to_frame: Affine, box: Box) -> np.ndarray:
        """Coordinates in another frame of the voxel centres of ``box``: float32 ``(3, z, y, x)``.

        Built from the three 1-D axes by broadcasting, so a block costs a few array sums.
        """
        x = self.axis_mm(0)[box[2]]
        y = self.axis_mm(1)[box[1]]
        z = self.axis_mm(2)[box[0]]
        shape = (len(z), len(y), len(x))
        out = np.empty((3, *shape), dtype=np.float32)
        for row in range(3):
            mx, my, mz = to_frame.matrix[row]
            out[row] = (mz * z + to_frame.offset[row])[:, None, None]
            out[row] += (my * y)[None, :, None]
            out[row] += (mx * x)[None, None, :]
        return out
