"""Target space, alignment plumbing, per-case checks and label headers (no elastix)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from deeprs.cli import main
from deeprs.data.geometry import rotation_matrix
from deeprs.data.ingest import CaseFiles
from deeprs.data.label_header import copy_image_geometry
from deeprs.errors import ConfigError, DataError
from deeprs.preprocess.align import AffineFigures, Start, _absorb, _compose, default_starts
from deeprs.preprocess.cohort import check_cohort
from deeprs.preprocess.crop import CropBox, box_corners
from deeprs.preprocess.qc import consensus_label
from deeprs.preprocess.resample import resample_label
from deeprs.preprocess.space import slice_axis_warning, target_space, turned_slice_axis

LABELS = {"rv": 1, "myo": 2, "lv": 3}


def _image(size_xyz, spacing, direction=None, origin=(3.0, -7.0, 11.0)) -> sitk.Image:
    image = sitk.Image([int(v) for v in size_xyz], sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _extremes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return points.min(axis=0), points.max(axis=0)


@pytest.mark.parametrize("thick_axis", [0, 1, 2])
def test_target_space_puts_the_slice_axis_on_z_and_tiles_the_box(thick_axis: int) -> None:
    spacing = [1.5, 1.5, 1.5]
    spacing[thick_axis] = 8.0
    direction = rotation_matrix((20, -10, 35)).ravel().tolist()
    image = _image((30, 40, 20), spacing, direction)
    box = CropBox((2, 3, 1), (20, 30, 12))
    space = target_space(image, box, (16, 24, 8))
    assert space.shape_xyz == (16, 24, 8)
    slice_direction = np.reshape(direction, (3, 3))[:, thick_axis]
    assert np.allclose(np.reshape(space.direction, (3, 3))[:, 2], slice_direction)
    assert space.spacing_xyz[2] == pytest.approx(box.size[thick_axis] * 8.0 / 8)
    # The grid's outer voxel edges are the box's: same physical corners.
    grid = space.grid()
    full = CropBox((0, 0, 0), space.shape_xyz)
    for got, expected in zip(
        _extremes(box_corners(grid, full)), _extremes(box_corners(image, box)), strict=True
    ):
        assert np.allclose(got, expected, atol=1e-6)


def test_an_isotropic_scan_keeps_its_axis_order() -> None:
    image = _image((30, 40, 20), (1.2, 1.2, 1.3))
    space = target_space(image, CropBox((0, 0, 0), (30, 40, 20)), (8, 8, 8))
    assert np.allclose(np.reshape(space.direction, (3, 3)), np.eye(3))


def test_a_slice_axis_landing_in_plane_is_warned_about_in_one_line() -> None:
    reference = _image((100, 100, 10), (1.5, 1.5, 10.0))
    space = target_space(reference, CropBox((0, 0, 0), (100, 100, 10)), (64, 64, 10))
    assert slice_axis_warning(space, (1.5, 1.5, 10.0), np.eye(3).ravel(), "ok") is None
    sideways = np.eye(3)[:, [2, 1, 0]].ravel()  # the scan's 10 mm axis points along x
    message = slice_axis_warning(space, (1.5, 1.5, 10.0), sideways, "case7")
    assert message is not None and "\n" not in message
    assert message.startswith("case7: its 10.0 mm slice axis lands on the target's x axis")
    assert "target_shape[0] = 15" in message


def test_a_stack_turned_on_its_side_is_told_apart_from_an_upright_or_upside_down_one() -> None:
    reference = _image((100, 100, 10), (1.5, 1.5, 10.0))
    space = target_space(reference, CropBox((0, 0, 0), (100, 100, 10)), (64, 64, 16))
    stack = (1.5, 1.5, 10.0)
    assert turned_slice_axis(space, stack, np.eye(3).ravel()) is None
    upside_down = rotation_matrix((180, 0, 0)).ravel()
    assert turned_slice_axis(space, stack, upside_down) is None
    on_its_side = rotation_matrix((90, 0, 0)).ravel()  # the slice axis now points along y
    assert turned_slice_axis(space, stack, on_its_side) == "y"
    assert turned_slice_axis(space, (1.2, 1.2, 1.3), on_its_side) is None  # no slice axis
    cube = target_space(reference, CropBox((0, 0, 0), (100, 100, 10)), (64, 64, 64))
    assert turned_slice_axis(cube, stack, on_its_side) is None  # the grid has none either


def test_label_resampling_keeps_a_thin_shell_of_thick_slices_unlike_nearest() -> None:
    """Test (a) in small: a 3 mm shell around a ball on 10 mm slices, put on a training-like
    grid directly and through 1.5 mm voxels turned 35 degrees. With per-structure linear
    weights the two agree to Dice 0.95; with nearest neighbour, which moves every boundary
    by up to half a source voxel at each resampling, they do not."""
    thick = _image((60, 60, 12), (1.5, 1.5, 10.0), origin=(0.0, 0.0, 0.0))
    z, y, x = np.meshgrid(
        np.arange(12) * 10.0, np.arange(60) * 1.5, np.arange(60) * 1.5, indexing="ij"
    )
    radius = np.sqrt((x - 45) ** 2 + (y - 45) ** 2 + (z - 55) ** 2)
    array = np.where(radius < 24, 3, 0) + np.where((radius >= 24) & (radius < 27), 2, 0)
    label = sitk.GetImageFromArray(array.astype(np.uint8))
    label.CopyInformation(thick)
    fine = sitk.Image([70, 70, 90], sitk.sitkUInt8)
    fine.SetSpacing((1.5, 1.5, 1.5))
    turn = rotation_matrix((35, 0, 0))
    fine.SetDirection(turn.ravel().tolist())
    fine.SetOrigin((np.array([45.0, 45.0, 55.0]) - turn @ np.array([52.5, 52.5, 67.5])).tolist())
    target = _image((40, 40, 16), (2.1, 2.1, 6.5), origin=(4.0, 4.0, 5.0))

    def nearest(image: sitk.Image, grid: sitk.Image) -> sitk.Image:
        return sitk.Resample(
            image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
        )

    def shell_dice(first: sitk.Image, second: sitk.Image) -> float:
        a, b = sitk.GetArrayFromImage(first) == 2, sitk.GetArrayFromImage(second) == 2
        return 2 * np.sum(a & b) / (np.sum(a) + np.sum(b))

    linear = shell_dice(
        resample_label(label, target), resample_label(resample_label(label, fine), target)
    )
    by_nearest = shell_dice(nearest(label, target), nearest(nearest(label, fine), target))
    # Measured: 0.954 against 0.939 (the bar of 0.95 met only with linear weights).
    assert linear >= 0.95 > by_nearest, (linear, by_nearest)
    assert set(np.unique(sitk.GetArrayFromImage(resample_label(label, fine)))) == {0, 2, 3}


def test_affine_figures_flag_collapse_and_stretch() -> None:
    fine = sitk.AffineTransform(3)
    fine.SetMatrix((rotation_matrix((10, 0, 30)) @ np.diag([1.1, 0.9, 0.8])).ravel().tolist())
    figures = AffineFigures.of(fine)
    assert figures.problem() is None
    assert figures.rotation_degrees == pytest.approx(31.6, abs=0.2)
    assert figures.scales == pytest.approx((0.8, 0.9, 1.1))
    collapsed = sitk.AffineTransform(3)
    collapsed.SetMatrix(np.diag([0.3, 0.4, 0.2]).ravel().tolist())
    assert AffineFigures.of(collapsed).problem().startswith("determinant 0.024")
    squashed = sitk.AffineTransform(3)
    squashed.SetMatrix(np.diag([1.0, 1.2, 0.2]).ravel().tolist())
    assert AffineFigures.of(squashed).problem() == "scales 0.20-1.20"
    stretched = sitk.AffineTransform(3)
    stretched.SetMatrix(np.diag([2.2, 0.5, 1.0]).ravel().tolist())
    assert AffineFigures.of(stretched).problem() == "stretch anisotropy 4.40"


def test_a_start_absorbed_into_the_header_composes_back_to_one_transform() -> None:
    moving = _image((10, 12, 8), (1.0, 2.0, 3.0), rotation_matrix((5, 0, 0)).ravel().tolist())
    start = Start("s", rotation_matrix((30, -20, 50)), np.array([4.0, -2.0, 9.0]))
    absorbed = _absorb(moving, start)
    for index in ([0, 0, 0], [9, 11, 7], [3, 5, 2]):
        seen = np.asarray(absorbed.TransformIndexToPhysicalPoint(index))
        real = np.asarray(moving.TransformIndexToPhysicalPoint(index))
        assert np.allclose(start.matrix @ seen + start.translation, real)
    inner = sitk.AffineTransform(3)
    inner.SetMatrix(np.diag([1.1, 0.9, 1.0]).ravel().tolist())
    inner.SetCenter((1.0, 2.0, 3.0))
    inner.SetTranslation((0.5, -1.0, 2.0))
    composed = _compose(start, inner)
    for point in ([0.0, 0.0, 0.0], [10.0, -5.0, 3.0]):
        expected = start.matrix @ np.asarray(inner.TransformPoint(point)) + start.translation
        assert np.allclose(composed.TransformPoint(point), expected)


def test_the_headers_start_undoes_a_header_rotation() -> None:
    fixed = _image((20, 20, 10), (1.5, 1.5, 8.0))
    turn = rotation_matrix((40, 40, 0))
    moving = _image((20, 20, 10), (1.5, 1.5, 8.0), turn.ravel().tolist(), (50.0, 0.0, 0.0))
    headers, centres = default_starts(fixed, moving)
    assert headers.name == "headers" and np.allclose(headers.matrix, turn)
    assert np.allclose(centres.matrix, np.eye(3))
    for index in ([0, 0, 0], [19, 19, 9]):
        mapped = headers.matrix @ np.asarray(fixed.TransformIndexToPhysicalPoint(index))
        assert np.allclose(
            mapped + headers.translation, moving.TransformIndexToPhysicalPoint(index)
        )


def _write(folder: Path, name: str, image: sitk.Image, label: sitk.Image | None) -> CaseFiles:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    image_path = folder / "images" / f"{name}.nii.gz"
    sitk.WriteImage(image, str(image_path))
    label_path = None
    if label is not None:
        label_path = folder / "labels" / f"{name}_gt.nii.gz"
        sitk.WriteImage(label, str(label_path))
    return CaseFiles(name, name, image_path, label_path)


def _pair(spacing=(1.5, 1.5, 10.0), origin=(3.0, -7.0, 11.0), filled=True):
    image = sitk.GetImageFromArray(
        np.random.default_rng(0).normal(size=(6, 20, 20)).astype(np.float32)
    )
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    values = np.zeros((6, 20, 20), np.uint8)
    if filled:
        values[2:4, 5:15, 5:15] = 3
    label = sitk.GetImageFromArray(values)
    label.CopyInformation(image)
    return image, label


def test_every_bad_case_is_reported_at_once_before_any_registration(tmp_path: Path) -> None:
    image, label = _pair()
    cases = [_write(tmp_path, "patient001_frame01", image, label)]
    _, empty = _pair(filled=False)
    cases.append(_write(tmp_path, "patient002_frame01", image, empty))
    lost = sitk.Image(label)
    lost.SetSpacing((1.0, 1.0, 1.0))
    lost.SetOrigin((0.0, 0.0, 0.0))
    cases.append(_write(tmp_path, "patient003_frame01", image, lost))
    broken = _write(tmp_path, "patient004_frame01", image, label)
    broken.image.write_bytes(broken.image.read_bytes()[:200])
    cases.append(broken)
    with pytest.raises(DataError) as caught:
        check_cohort(cases, LABELS)
    message = str(caught.value)
    assert "\n" not in message
    head, *items = message.split(" [")
    assert head == "3 of 4 cases failed the checks; fix them all, then rerun:"
    assert len(items) == 3
    assert items[0].startswith("1] label ") and "patient002_frame01_gt.nii.gz' is empty" in items[0]
    assert "same voxel grid" in items[1] and "deeprs fix-label-header" in items[1]
    assert "patient004_frame01.nii.gz' cannot be read" in items[2]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fix_label_header_copies_the_geometry_and_never_alters_inputs(tmp_path: Path) -> None:
    image, label = _pair(origin=(-40.0, 12.5, 3.0))
    lost = sitk.Image(label)
    lost.SetSpacing((1.0, 1.0, 1.0))
    lost.SetOrigin((0.0, 0.0, 0.0))
    files = _write(tmp_path, "patient001_frame01", image, lost)
    before = {_digest(files.image), _digest(files.label)}
    out = tmp_path / "fixed_gt.nii.gz"
    assert main(["fix-label-header", str(files.image), str(files.label), str(out)]) == 0
    fixed = sitk.ReadImage(str(out))
    assert fixed.GetOrigin() == pytest.approx(image.GetOrigin())
    assert fixed.GetSpacing() == pytest.approx(image.GetSpacing())
    assert np.array_equal(sitk.GetArrayFromImage(fixed), sitk.GetArrayFromImage(label))
    assert {_digest(files.image), _digest(files.label)} == before
    check_cohort([CaseFiles(files.id, files.id, files.image, out)], LABELS)
    with pytest.raises(DataError, match="is one of the inputs"):
        copy_image_geometry(files.image, files.label, files.label)
    other = sitk.Image([5, 5, 5], sitk.sitkUInt8)
    sitk.WriteImage(other, str(tmp_path / "small.nii.gz"))
    with pytest.raises(DataError, match="not one voxel grid"):
        copy_image_geometry(files.image, tmp_path / "small.nii.gz", tmp_path / "x.nii.gz")


def test_consensus_label_is_the_per_voxel_majority() -> None:
    first = np.array([[0, 1, 2, 2]], np.uint8)
    second = np.array([[1, 1, 2, 0]], np.uint8)
    third = np.array([[1, 0, 3, 0]], np.uint8)
    assert consensus_label([first, second, third], 3).tolist() == [[1, 1, 2, 0]]


def test_the_rule_settings_reach_preprocessing_whole(tmp_path: Path) -> None:
    """The preprocess rule passes the `data` and `preprocess` sections as one JSON object:
    every key arrives, including those without a flag of their own (data.subject_pattern)."""
    import argparse
    import json

    from deeprs.preprocess.cli import add_arguments, settings_from_arguments

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "patient001_frame01.nii.gz").write_bytes(b"")
    sections = {
        "data": {
            "source": "folder",
            "dir": str(tmp_path),
            "layout": "acdc",
            "modality": "mri",
            "labels": {"rv": 1, "myo": 2, "lv": 3},
            "subject_pattern": r"(?P<subject>patient\d+)_.*",
        },
        "preprocess": {"target_shape": [48, 48, 12], "crop_margin_mm": 7},
    }
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "out"), "--settings", json.dumps(sections)])
    settings = settings_from_arguments(args)
    assert settings.subject_pattern == r"(?P<subject>patient\d+)_.*"
    assert settings.target_shape_xyz == (48, 48, 12) and settings.crop_margin_mm == 7.0
    assert settings.layout == "acdc" and settings.labels == {"rv": 1, "myo": 2, "lv": 3}
    bad = parser.parse_args(["--out", str(tmp_path / "out"), "--settings", "{not json"])
    with pytest.raises(ConfigError, match="is not JSON"):
        settings_from_arguments(bad)
