"""Case discovery, validation messages, label mapping and orientation of ``deeprs.data.ingest``."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from deeprs.data.ingest import CaseFiles, discover_cases, load_case, read_volume
from deeprs.errors import DataError

LABELS = {"myo": 205, "lv": 500}


def _volume(array: np.ndarray, spacing=(2.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0), direction=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _label_array(shape=(6, 8, 10)) -> np.ndarray:
    label = np.zeros(shape, dtype=np.int16)
    label[1:3, 2:5, 3:6] = 205
    label[3:5, 2:5, 3:6] = 500
    return label


def _case(tmp_path: Path, image=None, label=None, name="case") -> CaseFiles:
    image = image if image is not None else _volume(np.random.rand(6, 8, 10).astype(np.float32))
    label = label if label is not None else _volume(_label_array())
    return CaseFiles(
        name,
        name,
        _write(image, tmp_path / f"{name}_image.nii.gz"),
        _write(label, tmp_path / f"{name}_label.nii.gz"),
    )


def test_mmwhs_layout_pairs_images_with_labels(tmp_path: Path) -> None:
    image = _volume(np.zeros((4, 4, 4), np.float32))
    _write(image, tmp_path / "ct_train" / "ct_train_1002_image.nii.gz")
    _write(image, tmp_path / "ct_train" / "ct_train_1002_label.nii.gz")
    _write(image, tmp_path / "ct_train" / "ct_train_1001_image.mha")
    _write(image, tmp_path / "ct_train" / "ct_train_1001_label.nrrd")
    _write(image, tmp_path / "ct_test" / "ct_test_2001_image.nii.gz")
    cases = discover_cases(tmp_path, "mmwhs")
    assert [c.id for c in cases] == ["ct_test_2001", "ct_train_1001", "ct_train_1002"]
    assert [c.label is not None for c in cases] == [False, True, True]
    assert cases[1].label.name == "ct_train_1001_label.nrrd"
    assert all(c.subject == c.id for c in cases)


def test_acdc_layout_groups_frames_by_patient(tmp_path: Path) -> None:
    image = _volume(np.zeros((4, 4, 4), np.float32))
    for frame in ("patient001_frame01", "patient001_frame12", "patient002_frame01"):
        _write(image, tmp_path / "images" / f"{frame}.nii.gz")
        _write(image, tmp_path / "labels" / f"{frame}_gt.nii.gz")
    cases = discover_cases(tmp_path, "acdc")
    assert [c.subject for c in cases] == ["patient001", "patient001", "patient002"]
    assert all(c.label is not None for c in cases)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "data folder '{dir}/nowhere' does not exist; set data.dir to your cohort"),
        ("empty", "data folder '{dir}' holds no mmwhs cases; expected ct_train/*_image.nii.gz"),
        ("duplicate", "case id 'ct_test_2001' appears twice"),
        ("orphan", "has no image 'ct_train_1001_image' beside it"),
    ],
)
def test_discovery_errors_name_the_folder_or_file(tmp_path: Path, setup: str, message: str) -> None:
    image = _volume(np.zeros((4, 4, 4), np.float32))
    folder = tmp_path / "nowhere" if setup == "missing" else tmp_path
    if setup == "duplicate":
        _write(image, tmp_path / "ct_test" / "ct_test_2001_image.nii.gz")
        _write(image, tmp_path / "ct_test" / "ct_test_2001_image.mha")
    if setup == "orphan":
        _write(image, tmp_path / "ct_train" / "ct_train_1001_label.nii.gz")
    with pytest.raises(DataError) as error:
        discover_cases(folder, "mmwhs")
    assert message.format(dir=tmp_path) in str(error.value)


def test_real_acdc_cohort_is_discovered_and_loaded(shared_data: Path) -> None:
    cases = discover_cases(shared_data / "acdc", "acdc")
    assert len(cases) == 60
    assert len({c.subject for c in cases}) == 30
    case = load_case(cases[0], {"rv": 1, "myo": 2, "lv": 3})
    classes = np.unique(sitk.GetArrayViewFromImage(case.label))
    assert classes.tolist() == [0, 1, 2, 3]
    assert case.image.GetPixelID() == sitk.sitkFloat32


def test_unknown_label_values_are_listed(tmp_path: Path) -> None:
    label = _label_array()
    label[0, 0, 0] = 7
    label[0, 0, 1] = 600
    files = _case(tmp_path, label=_volume(label))
    with pytest.raises(DataError) as error:
        load_case(files, LABELS)
    assert str(error.value) == (
        f"label '{files.label}' has value(s) [7, 600] that are not in data.labels "
        "(myo: 205, lv: 500); add them to the config's label table"
    )


def test_label_values_become_contiguous_classes_in_table_order(tmp_path: Path) -> None:
    raw = _label_array()
    case = load_case(_case(tmp_path, label=_volume(raw)), {"lv": 500, "myo": 205})
    classes = sitk.GetArrayFromImage(case.label)
    assert classes.dtype == np.uint8
    assert np.array_equal(classes == 1, raw == 500)
    assert np.array_equal(classes == 2, raw == 205)


def test_absent_structure_is_a_warning_not_an_error(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        load_case(_case(tmp_path), {**LABELS, "rv": 600})
    assert "structure 'rv' (value 600) is absent" in caplog.text


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"shape": (6, 8, 9)}, "size (9, 8, 6) differs from the image's (10, 8, 6)"),
        (
            {"spacing": (2.0, 2.0, 3.5)},
            "spacing (2.0, 2.0, 3.5) differs from the image's (2.0, 2.0, 3.0)",
        ),
        (
            {"direction": (-1, 0, 0, 0, 1, 0, 0, 0, 1)},
            "orientation (direction cosines) differs from the image's",
        ),
        (
            {"origin": (0.0, 5.0, 0.0)},
            "origin (0.0, 5.0, 0.0) differs from the image's (0.0, 0.0, 0.0)",
        ),
    ],
)
def test_label_on_another_grid_is_refused(tmp_path: Path, change: dict, problem: str) -> None:
    label = _volume(
        _label_array(change.get("shape", (6, 8, 10))),
        spacing=change.get("spacing", (2.0, 2.0, 3.0)),
        origin=change.get("origin", (0.0, 0.0, 0.0)),
        direction=change.get("direction"),
    )
    files = _case(tmp_path, label=label)
    with pytest.raises(DataError) as error:
        load_case(files, LABELS)
    if "shape" in change:  # another voxel grid: only resampling can fix it
        assert str(error.value) == (
            f"label '{files.label}' does not match image '{files.image}': {problem}; "
            "resample the label onto the image grid"
        )
    else:  # the same voxel grid with another header: copy the image's geometry
        assert str(error.value).startswith(
            f"label '{files.label}' has the same voxel grid (10, 8, 6) as image "
            f"'{files.image}' but another header: {problem}; if its voxels belong to the "
            "image, copy the image's geometry onto a copy: `deeprs fix-label-header "
            f"{files.image} {files.label} FIXED.nii.gz`"
        )
        assert "label.CopyInformation(sitk.ReadImage(IMAGE))" in str(error.value)
        assert "resample" not in str(error.value)


def test_origin_round_off_is_tolerated(tmp_path: Path) -> None:
    label = _volume(_label_array(), origin=(0.0, 1e-4, 0.0))
    assert load_case(_case(tmp_path, label=label), LABELS).labelled


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = _write(_volume(np.random.rand(6, 8, 10).astype(np.float32)), tmp_path / "a.nii.gz")
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(DataError) as error:
        read_volume(path)
    assert str(error.value).startswith(f"'{path}' cannot be read as an image (")
    assert str(error.value).endswith(
        "replace the file (it may be truncated or not a NIfTI/MHA/NRRD file)"
    )


def test_two_dimensional_file_is_refused(tmp_path: Path) -> None:
    path = _write(sitk.GetImageFromArray(np.zeros((8, 8), np.float32)), tmp_path / "flat.nii.gz")
    with pytest.raises(DataError, match="is a 2D image with 1 component"):
        read_volume(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_nan_intensities_are_refused(tmp_path: Path, suffix: str) -> None:
    array = np.random.rand(6, 8, 10).astype(np.float32)
    array[2, 3, 4] = np.nan
    array[1, 1, 1] = np.inf
    path = _write(_volume(array), tmp_path / f"nan{suffix}")
    with pytest.raises(DataError) as error:
        read_volume(path)
    assert str(error.value) == f"'{path}' has 2 NaN or infinite voxel(s); fix or replace the file"


def test_canonical_orientation_keeps_every_voxel_at_its_physical_point(tmp_path: Path) -> None:
    """A flipped, axis-permuted scan ends in LPS with the same intensity at each point."""
    rng = np.random.default_rng(0)
    array = rng.random((6, 8, 10)).astype(np.float32)
    # Columns: x runs towards -z (inferior), y towards +x (left), z towards -y (anterior).
    direction = (0, 1, 0, 0, 0, -1, -1, 0, 0)
    original = _volume(array, spacing=(1.0, 2.0, 3.0), origin=(5.0, -3.0, 7.0), direction=direction)
    label = _volume(
        _label_array(), spacing=(1.0, 2.0, 3.0), origin=(5.0, -3.0, 7.0), direction=direction
    )
    files = _case(tmp_path, image=original, label=label)
    case = load_case(files, LABELS)
    assert np.allclose(case.image.GetDirection(), np.eye(3).ravel())
    assert (
        sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(case.image.GetDirection())
        == "LPS"
    )
    # Old y (left) becomes x; old z flipped (posterior) becomes y; old x flipped becomes z.
    assert case.image.GetSize() == (8, 6, 10)
    assert case.image.GetSpacing() == (2.0, 3.0, 1.0)
    assert case.label.GetSize() == (8, 6, 10)
    canonical = sitk.GetArrayFromImage(case.image)
    for index in [(0, 0, 0), (9, 7, 5), (3, 2, 1), (6, 5, 4)]:
        point = original.TransformIndexToPhysicalPoint(index)
        moved = case.image.TransformPhysicalPointToIndex(point)
        assert canonical[moved[::-1]] == pytest.approx(array[index[::-1]])


def test_inputs_are_never_written(tmp_path: Path) -> None:
    files = _case(tmp_path)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (files.image, files.label)}
    mtimes = {p: p.stat().st_mtime_ns for p in before}
    load_case(files, LABELS)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before} == before
    assert {p: p.stat().st_mtime_ns for p in before} == mtimes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_image.nii.gz", "case_label.nii.gz"]
