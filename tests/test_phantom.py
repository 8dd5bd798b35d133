"""The synthetic cardiac CT cohort: files, geometry, anatomy, intensities, determinism, CLI errors.

Small volumes (64x64x40 voxels of 5x5x6 mm, a 320x320x240 mm field of view) keep each case
to a few hundredths of a second while leaving every structure several voxels across.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from deeprs.cli import main
from deeprs.data.geometry import Affine, Grid
from deeprs.phantom.heart import heart_warp
from deeprs.phantom.render import Rendered, render
from deeprs.phantom.subject import MMWHS_LABELS, Tissue, draw_subject

SHAPE = (64, 64, 40)
SPACING = (5.0, 5.0, 6.0)
SEED = 11
GRID = Grid(SHAPE, SPACING)
VOXEL_ML = float(np.prod(SPACING)) / 1000.0

# Plausible adult volumes in ml (end-diastole, rough), wide enough for 5-6 mm voxels.
VOLUME_RANGES_ML = {
    "myo": (60, 250),
    "lv": (50, 250),
    "rv": (40, 250),
    "la": (20, 150),
    "ra": (20, 150),
    "aa": (10, 80),
    "pa": (8, 60),
}


def _phantom_args(
    out: Path, seed: int = SEED, n_labelled: int = 2, n_unlabelled: int = 1
) -> list[str]:
    return [
        "phantom",
        "--out",
        str(out),
        "--n-labelled",
        str(n_labelled),
        "--n-unlabelled",
        str(n_unlabelled),
        "--shape",
        *map(str, SHAPE),
        "--spacing",
        *map(str, SPACING),
        "--seed",
        str(seed),
    ]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    assert main(_phantom_args(out)) == 0
    return out


def _case(number: int, seed: int = SEED) -> Rendered:
    rng = np.random.default_rng([seed, number])
    return render(GRID, draw_subject(rng), rng)


@pytest.fixture(scope="module")
def cases() -> list[Rendered]:
    return [_case(1001 + index) for index in range(3)]


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_cli_writes_the_mmwhs_names_and_a_mosaic(cohort: Path) -> None:
    assert sorted(_files(cohort)) == [
        "ct_test/ct_test_2001_image.nii.gz",
        "ct_train/ct_train_1001_image.nii.gz",
        "ct_train/ct_train_1001_label.nii.gz",
        "ct_train/ct_train_1002_image.nii.gz",
        "ct_train/ct_train_1002_label.nii.gz",
        "mosaic.png",
    ]
    mosaic = (cohort / "mosaic.png").read_bytes()
    assert mosaic.startswith(b"\x89PNG") and len(mosaic) > 20_000


def test_same_seed_gives_identical_files_with_any_workers_and_another_seed_does_not(
    cohort: Path, tmp_path: Path
) -> None:
    assert main([*_phantom_args(tmp_path / "again"), "--workers", "2"]) == 0
    assert _files(tmp_path / "again") == _files(cohort)
    assert main(_phantom_args(tmp_path / "other", seed=SEED + 1)) == 0
    other = _files(tmp_path / "other")
    for name, content in _files(cohort).items():
        if name.endswith(".nii.gz"):
            assert other[name] != content, name


def test_the_rule_settings_and_the_explicit_options_write_the_same_cohort(
    cohort: Path, tmp_path: Path
) -> None:
    """The rule passes section `phantom` and `seed` as one JSON object (`--settings`)."""
    import json

    settings = {"n_labelled": 2, "n_unlabelled": 1, "shape": list(SHAPE)}
    settings |= {"spacing": list(SPACING), "seed": SEED}
    out = tmp_path / "from_settings"
    assert main(["phantom", "--out", str(out), "--settings", json.dumps(settings)]) == 0
    assert _files(out) == _files(cohort)
    bad = json.dumps({**settings, "n_labelled": "two"})
    assert main(["phantom", "--out", str(tmp_path / "bad"), "--settings", bad]) == 2


def test_a_case_does_not_depend_on_how_many_are_made(cohort: Path, tmp_path: Path) -> None:
    assert main(_phantom_args(tmp_path, n_labelled=1, n_unlabelled=0)) == 0
    name = "ct_train/ct_train_1001_image.nii.gz"
    assert (tmp_path / name).read_bytes() == (cohort / name).read_bytes()


def test_geometry_is_written_as_stated(cohort: Path) -> None:
    path = cohort / "ct_train" / "ct_train_1001_image.nii.gz"
    image = sitk.ReadImage(str(path))
    origin = [-(n - 1) / 2 * s for n, s in zip(SHAPE, SPACING, strict=True)]
    assert image.GetSize() == SHAPE
    assert image.GetSpacing() == pytest.approx(SPACING)
    assert image.GetOrigin() == pytest.approx(origin)
    assert image.GetDirection() == pytest.approx(np.eye(3).ravel())
    assert image.GetPixelID() == sitk.sitkInt16

    nifti = nib.load(path)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    expected = np.eye(4)
    expected[:3, :3] = lps_to_ras @ np.diag(SPACING)
    expected[:3, 3] = lps_to_ras @ origin
    np.testing.assert_allclose(nifti.affine, expected, atol=1e-4)
    np.testing.assert_allclose(nifti.header.get_zooms(), SPACING)
    assert nifti.get_data_dtype() == np.int16
    np.testing.assert_array_equal(
        np.asarray(nifti.dataobj).transpose(2, 1, 0), sitk.GetArrayFromImage(image)
    )
    for index in [(0, 0, 0), (63, 10, 39), (5, 40, 17)]:
        lps = image.TransformIndexToPhysicalPoint(index)
        ras = nifti.affine @ [*index, 1.0]
        np.testing.assert_allclose(ras[:3], lps_to_ras @ lps, atol=1e-4)

    label = sitk.ReadImage(str(cohort / "ct_train" / "ct_train_1001_label.nii.gz"))
    assert label.GetPixelID() == sitk.sitkInt16
    assert label.GetOrigin() == image.GetOrigin() and label.GetSpacing() == image.GetSpacing()


def test_grid_coordinates_match_simpleitk_physical_points() -> None:
    reference = sitk.Image(list(SHAPE), sitk.sitkUInt8)
    reference.SetSpacing(SPACING)
    reference.SetOrigin(GRID.origin_xyz)
    pose = Affine.similarity(np.eye(3), 1.0, np.zeros(3))
    coordinates = GRID.coordinates(pose, GRID.full_box())
    for x, y, z in [(0, 0, 0), (63, 0, 39), (12, 50, 7)]:
        np.testing.assert_allclose(
            coordinates[:, z, y, x], reference.TransformIndexToPhysicalPoint((x, y, z)), atol=1e-4
        )


def test_label_holds_exactly_the_seven_mmwhs_values_with_plausible_volumes(cohort: Path) -> None:
    for number in (1001, 1002):
        path = cohort / "ct_train" / f"ct_train_{number}_label.nii.gz"
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        assert set(np.unique(label)) == {0, *MMWHS_LABELS.values()}
        for name, value in MMWHS_LABELS.items():
            volume = float((label == value).sum()) * VOXEL_ML
            low, high = VOLUME_RANGES_ML[name]
            assert low <= volume <= high, f"{name} {volume:.1f} ml in case {number}"


def test_intensities_are_plausible_hounsfield_units(cases: list[Rendered]) -> None:
    def mean_hu(case: Rendered, *tissues: Tissue) -> float:
        return float(case.image[np.isin(case.tissue, tissues)].mean())

    for case in cases:
        assert case.image.dtype == np.int16
        assert mean_hu(case, Tissue.AIR) < -900
        assert mean_hu(case, Tissue.LUNG) < -500
        assert -150 < mean_hu(case, Tissue.FAT) < -50
        assert 0 < mean_hu(case, Tissue.MUSCLE) < 100
        assert mean_hu(case, Tissue.LEFT_BLOOD, Tissue.RIGHT_BLOOD) > 150
        assert 200 < mean_hu(case, Tissue.RIGHT_BLOOD) < mean_hu(case, Tissue.LEFT_BLOOD) < 500
        assert case.image[case.tissue == Tissue.CORTICAL_BONE].max() > 500
        cavities = np.isin(case.label, [MMWHS_LABELS[name] for name in ("lv", "rv", "la", "ra")])
        assert case.image[cavities].mean() > 150


def _touching(label: np.ndarray, first: str, second: str) -> int:
    """Voxels of ``second`` face-adjacent to ``first``."""
    grown = ndimage.binary_dilation(label == MMWHS_LABELS[first])
    return int((grown & (label == MMWHS_LABELS[second])).sum())


def test_myocardium_wraps_the_lv_cavity_and_chambers_touch(cases: list[Rendered]) -> None:
    for case in cases:
        cavity = case.label == MMWHS_LABELS["lv"]
        rim = ndimage.binary_dilation(cavity) & ~cavity
        assert (case.label[rim] == MMWHS_LABELS["myo"]).mean() > 0.7
        for first, second in [
            ("rv", "myo"),
            ("la", "lv"),
            ("ra", "rv"),
            ("aa", "lv"),
            ("pa", "rv"),
            ("ra", "la"),
        ]:
            assert _touching(case.label, first, second) > 0, (first, second)


def test_heart_is_inside_the_body_and_between_the_lungs(cases: list[Rendered]) -> None:
    for case in cases:
        body = np.stack([ndimage.binary_fill_holes(plane != Tissue.AIR) for plane in case.tissue])
        assert body[case.label > 0].all()
        z, y, x = np.round(np.argwhere(case.label > 0).mean(axis=0)).astype(int)
        row = case.tissue[z, y]
        heart_xs = np.flatnonzero(case.label[z, y] > 0)
        assert (row[: heart_xs.min()] == Tissue.LUNG).any(), "no lung on the patient's right"
        assert (row[heart_xs.max() :] == Tissue.LUNG).any(), "no lung on the patient's left"


def test_poses_and_shapes_differ_between_cases(cases: list[Rendered]) -> None:
    spacing_zyx = np.array(SPACING[::-1])
    centroids = [np.argwhere(case.label > 0).mean(axis=0) * spacing_zyx for case in cases]
    for first, second in itertools.combinations(centroids, 2):
        assert np.linalg.norm(first - second) > 2.0
    lv_volumes = [int((case.label == MMWHS_LABELS["lv"]).sum()) for case in cases]
    assert len(set(lv_volumes)) == len(lv_volumes)


def test_heart_warp_is_smooth_several_mm_and_does_not_fold() -> None:
    subject = draw_subject(np.random.default_rng([SEED, 1001]))
    warp = heart_warp(subject)
    axis = np.linspace(-60.0, 60.0, 25, dtype=np.float32)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"))
    displacement = warp(points) - points
    magnitude = np.linalg.norm(displacement, axis=0)
    assert 1.5 < magnitude.max() < 15.0
    step = float(axis[1] - axis[0])
    jacobian = np.stack([np.stack(np.gradient(warp(points)[i], step), 0) for i in range(3)])
    determinant = np.linalg.det(np.moveaxis(jacobian, (0, 1), (-2, -1)))
    assert determinant.min() > 0.3


def test_anatomy_is_in_millimetres_not_voxels() -> None:
    """The same subject on a finer grid has the same LV volume and place (within voxel error)."""
    fine = Grid((96, 96, 60), (10 / 3, 10 / 3, 4.0))
    measures = []
    for grid in (GRID, fine):
        rng = np.random.default_rng([SEED, 1001])
        label = render(grid, draw_subject(rng), rng).label
        lv = label == MMWHS_LABELS["lv"]
        centre = np.argwhere(lv).mean(axis=0)[::-1] * np.array(grid.spacing_xyz) + np.array(
            grid.origin_xyz
        )
        measures.append((lv.sum() * np.prod(grid.spacing_xyz) / 1000.0, centre))
    (coarse_ml, coarse_centre), (fine_ml, fine_centre) = measures
    assert abs(coarse_ml - fine_ml) < 0.12 * fine_ml
    assert np.linalg.norm(coarse_centre - fine_centre) < 3.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("--shape", "8", "64", "40"),
            "--shape must be at least 16 voxels along each axis (got 8 64 40)",
        ),
        (("--spacing", "0", "5", "6"), "--spacing must be positive along each axis (got 0 5 6)"),
        (("--n-labelled", "0"), "--n-labelled must be between 1 and 999 (got 0)"),
        (("--n-unlabelled", "-1"), "--n-unlabelled must be between 0 and 999 (got -1)"),
        (
            ("--spacing", "1", "1", "1"),
            "--shape times --spacing gives a field of view of 64x64x40 mm, but the chest around the heart "
            "needs at least 200 mm along each axis: raise --shape or --spacing",
        ),
        (("--seed", "-3"), "--seed must be zero or positive (got -3)"),
    ],
)
def test_bad_arguments_exit_2_with_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, ...], message: str
) -> None:
    args = _phantom_args(tmp_path / "out")
    option = change[0]
    position = args.index(option)
    width = 4 if option in ("--shape", "--spacing") else 2
    args[position : position + width] = change
    assert main(args) == 2
    assert capsys.readouterr().err == f"deeprs phantom: error: {message}\n"
    assert not (tmp_path / "out").exists()
