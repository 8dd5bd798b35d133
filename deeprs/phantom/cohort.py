"""The synthetic cardiac CT cohort in the MM-WHS 2017 layout (written by ``deeprs phantom``).

``DIR/ct_train/ct_train_{1001+i}_{image,label}.nii.gz`` for the labelled cases,
``DIR/ct_test/ct_test_{2001+j}_image.nii.gz`` for the unlabelled ones and ``DIR/mosaic.png``.
Images are int16 Hounsfield units, labels int16 with the MM-WHS values (205, 420, 500, 550,
600, 820, 850) and 0. Geometry: the spacing asked for, identity direction (LPS, as ITK
stores it; nibabel reads the affine diag(-sx, -sy, sz) in RAS) and the origin that puts the
volume's centre at (0, 0, 0) mm.

Each case is drawn from its own generator ``numpy.random.default_rng([seed, case number])``,
so a case does not depend on how many others are made, and the same seed writes
byte-identical files.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from deeprs.data.geometry import Grid
from deeprs.data.mosaic import write_cohort_mosaic
from deeprs.errors import ConfigError
from deeprs.io import write_image
from deeprs.phantom.naming import labelled_case_id, unlabelled_case_id
from deeprs.phantom.render import render
from deeprs.phantom.subject import MMWHS_LABELS, draw_subject
from deeprs.progress import Progress

log = logging.getLogger(__name__)

MIN_VOXELS = 16
MIN_FIELD_OF_VIEW_MM = 200.0
MAX_CASES = 999
MOSAIC_CASES = 4


@dataclass(frozen=True)
class CohortSettings:
    """What the command was asked to make."""

    n_labelled: int
    n_unlabelled: int
    shape_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    seed: int

    def check(self) -> None:
        """Raise ConfigError with one sentence naming the option when a setting cannot work."""
        if not 1 <= self.n_labelled <= MAX_CASES:
            raise ConfigError(
                f"--n-labelled must be between 1 and {MAX_CASES} (got {self.n_labelled})"
            )
        if not 0 <= self.n_unlabelled <= MAX_CASES:
            raise ConfigError(
                f"--n-unlabelled must be between 0 and {MAX_CASES} (got {self.n_unlabelled})"
            )
        if min(self.shape_xyz) < MIN_VOXELS:
            raise ConfigError(
                f"--shape must be at least {MIN_VOXELS} voxels along each axis (got {_join(self.shape_xyz)})"
            )
        if min(self.spacing_xyz) <= 0:
            raise ConfigError(
                f"--spacing must be positive along each axis (got {_join(self.spacing_xyz)})"
            )
        field_of_view = Grid(self.shape_xyz, self.spacing_xyz).field_of_view_mm
        if min(field_of_view) < MIN_FIELD_OF_VIEW_MM:
            raise ConfigError(
                f"--shape times --spacing gives a field of view of {_join(field_of_view, 'x')} mm, but the chest "
                f"around the heart needs at least {MIN_FIELD_OF_VIEW_MM:.0f} mm along each axis: raise --shape or --spacing"
            )
        if self.seed < 0:
            raise ConfigError(f"--seed must be zero or positive (got {self.seed})")


@dataclass(frozen=True)
class CaseFiles:
    """One case to write: its MM-WHS id and number, and its file paths."""

    case_id: str
    number: int
    image: Path
    label: Path | None


def _join(values: tuple[float, ...], separator: str = " ") -> str:
    return separator.join(f"{value:g}" for value in values)


def cohort_files(out_dir: Path, n_labelled: int, n_unlabelled: int) -> list[CaseFiles]:
    """The MM-WHS names: ct_train_1001.. (image and label) and ct_test_2001.. (image only)."""
    cases = []
    for index in range(n_labelled):
        case_id = labelled_case_id(index)
        folder = out_dir / "ct_train"
        cases.append(
            CaseFiles(
                case_id,
                1001 + index,
                folder / f"{case_id}_image.nii.gz",
                folder / f"{case_id}_label.nii.gz",
            )
        )
    for index in range(n_unlabelled):
        case_id = unlabelled_case_id(index)
        cases.append(
            CaseFiles(case_id, 2001 + index, out_dir / "ct_test" / f"{case_id}_image.nii.gz", None)
        )
    return cases


def write_volume(array: np.ndarray, grid: Grid, path: Path) -> None:
    """Write a (z, y, x) array as compressed NIfTI with the grid's spacing, origin and identity direction."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing_xyz)
    image.SetOrigin(grid.origin_xyz)
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    write_image(image, path)


def write_case(case: CaseFiles, grid: Grid, seed: int) -> str:
    """Draw, render and write one case; returns its id (for progress)."""
    rng = np.random.default_rng([seed, case.number])
    rendered = render(grid, draw_subject(rng), rng)
    write_volume(rendered.image, grid, case.image)
    if case.label is not None:
        write_volume(rendered.label, grid, case.label)
    return case.case_id


def generate_cohort(out_dir: Path, settings: CohortSettings, workers: int = 1) -> list[CaseFiles]:
    """Write every case and the mosaic; cases are independent, so ``workers`` processes may share them."""
    settings.check()
    grid = Grid(settings.shape_xyz, settings.spacing_xyz)
    cases = cohort_files(out_dir, settings.n_labelled, settings.n_unlabelled)
    log.info(
        "phantom: %d labelled + %d unlabelled cases, %s voxels of %s mm (field of view %s mm), seed %d, into %s",
        settings.n_labelled,
        settings.n_unlabelled,
        _join(settings.shape_xyz, "x"),
        _join(settings.spacing_xyz, "x"),
        _join(grid.field_of_view_mm, "x"),
        settings.seed,
        out_dir,
    )
    started = time.perf_counter()
    progress = Progress(len(cases), "phantom", unit="case")
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(write_case, cases, [grid] * len(cases), [settings.seed] * len(cases)):
                progress.update()
    else:
        for case in cases:
            write_case(case, grid, settings.seed)
            progress.update()
    progress.close()
    shown = [(case.case_id, case.image, case.label) for case in cases if case.label is not None][
        :MOSAIC_CASES
    ]
    write_cohort_mosaic(shown, MMWHS_LABELS, out_dir / "mosaic.png")
    log.info(
        "phantom: wrote %d cases and mosaic.png in %.1f s",
        len(cases),
        time.perf_counter() - started,
    )
    return cases
