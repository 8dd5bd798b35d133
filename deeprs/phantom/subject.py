"""What is random about one phantom subject, drawn up front from the case's own generator.

The scene lives in three nested frames, all in millimetres:

- world (LPS, the volume's frame),
- body (x left, y posterior, z superior; the chest centred on its origin), placed in the
  world by a random similarity (the global pose: affine registration is needed),
- heart (body-parallel axes centred on the heart), placed in the body by a small random
  rigid pose and then warped by a smooth random displacement (deformable registration is
  needed beyond affine).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from deeprs.data.geometry import Affine, rotation_matrix

MMWHS_LABELS: dict[str, int] = {
    "myo": 205,
    "la": 420,
    "lv": 500,
    "ra": 550,
    "rv": 600,
    "aa": 820,
    "pa": 850,
}
"""The MM-WHS 2017 label value of each structure the phantom draws."""


class Tissue(enum.IntEnum):
    """What a voxel is made of; each subject maps these to its own HU values."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    LUNG = 3
    LUNG_VESSEL = 4
    CORTICAL_BONE = 5
    MARROW = 6
    SOFT_TISSUE = 7
    LEFT_BLOOD = 8
    RIGHT_BLOOD = 9
    MYOCARDIUM = 10


@dataclass(frozen=True)
class Subject:
    """Everything random about one case, drawn up front from its own generator."""

    world_from_body: Affine
    body_from_heart: Affine
    body_half_axes: tuple[float, float]
    fat_mm: float
    muscle_mm: float
    diaphragm_z: float
    rib_phase: float
    chamber_scale: dict[str, float]
    myocardium_mm: float
    aorta_radius: float
    pulmonary_radius: float
    wave_amplitudes: np.ndarray
    wave_vectors: np.ndarray
    wave_phases: np.ndarray
    hu: dict[Tissue, float]
    blur_mm: tuple[float, float, float]
    noise_hu: float

    def cavity_half_axes(self) -> tuple[float, float]:
        """Half width and half depth of the thoracic cavity inside fat and muscle."""
        wall = self.fat_mm + self.muscle_mm
        return self.body_half_axes[0] - wall, self.body_half_axes[1] - wall


def draw_subject(rng: np.random.Generator) -> Subject:
    """Draw a subject: pose, body build, chamber sizes, heart warp and contrast phase."""
    body_rotation = rotation_matrix(rng.uniform(-1, 1, 3) * np.array([6.0, 6.0, 10.0]))
    world_from_body = Affine.similarity(
        body_rotation, rng.uniform(0.9, 1.1), rng.uniform(-10.0, 10.0, 3)
    )
    heart_rotation = rotation_matrix(rng.uniform(-8.0, 8.0, 3))
    heart_centre = np.array([15.0, -20.0, -25.0]) + rng.uniform(-6.0, 6.0, 3)
    body_from_heart = Affine.similarity(heart_rotation, 1.0, heart_centre)

    n_waves = 4
    directions = rng.normal(size=(n_waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = rng.uniform(110.0, 180.0, n_waves)
    warp_mm = rng.uniform(3.0, 6.0)

    left_blood = rng.uniform(330.0, 450.0)
    right_blood = max(250.0, left_blood - rng.uniform(20.0, 150.0))
    hu = {
        Tissue.AIR: -1000.0,
        Tissue.FAT: rng.uniform(-110.0, -80.0),
        Tissue.MUSCLE: rng.uniform(35.0, 55.0),
        Tissue.LUNG: rng.uniform(-880.0, -820.0),
        Tissue.LUNG_VESSEL: rng.uniform(0.45, 0.7) * right_blood,
        Tissue.CORTICAL_BONE: rng.uniform(1000.0, 1400.0),
        Tissue.MARROW: rng.uniform(200.0, 320.0),
        Tissue.SOFT_TISSUE: rng.uniform(45.0, 70.0),
        Tissue.LEFT_BLOOD: left_blood,
        Tissue.RIGHT_BLOOD: right_blood,
        Tissue.MYOCARDIUM: rng.uniform(90.0, 150.0),
    }
    return Subject(
        world_from_body=world_from_body,
        body_from_heart=body_from_heart,
        body_half_axes=(rng.uniform(132.0, 148.0), rng.uniform(104.0, 116.0)),
        fat_mm=rng.uniform(8.0, 20.0),
        muscle_mm=rng.uniform(12.0, 18.0),
        diaphragm_z=rng.uniform(-80.0, -65.0),
        rib_phase=rng.uniform(0.0, 1.0),
        chamber_scale={name: rng.uniform(0.9, 1.12) for name in ("lv", "rv", "la", "ra")},
        myocardium_mm=rng.uniform(8.0, 12.0),
        aorta_radius=rng.uniform(12.5, 16.0),
        pulmonary_radius=rng.uniform(11.0, 14.0),
        wave_amplitudes=rng.normal(size=(n_waves, 3)) * warp_mm / np.sqrt(n_waves),
        wave_vectors=directions * (2 * np.pi / wavelengths)[:, None],
        wave_phases=rng.uniform(0.0, 2 * np.pi, n_waves),
        hu=hu,
        blur_mm=(rng.uniform(0.6, 1.1), rng.uniform(0.6, 1.1), rng.uniform(1.0, 1.8)),
        noise_hu=rng.uniform(8.0, 25.0),
    )
