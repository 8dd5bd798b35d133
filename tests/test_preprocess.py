"""Crop boxes, output grids, intensity scaling, QC overlap and itk-elastix alignment.

The elastix tests share one registrar (its first ParameterObject costs 15-25 s) and run on
the real CTA in ../shared/data/cta, downsampled to 4.5 mm so that each registration takes
about a second.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from deeprs.data.cases import load_manifest
from deeprs.data.ingest import CaseFiles, load_case
from deeprs.errors import ConfigError, DataError
from deeprs.preprocess.affine import AffineRegistrar, resample_to_spacing, smoothing_schedule
from deeprs.preprocess.cli import add_arguments, settings_from_arguments
from deeprs.preprocess.cohort import preprocess_cohort
from deeprs.preprocess.crop import CropBox, box_corners, crop, enclosing_box, label_box
from deeprs.preprocess.qc import mean_dice, mean_pairwise_dice
from deeprs.preprocess.reference import choose_reference
from deeprs.preprocess.resample import box_grid, resample_onto, scale_intensities
from deeprs.preprocess.settings import PreprocessSettings
from deeprs.preprocess.space import TargetSpace

CTA_LABELS = {"heart": 1, "aorta": 2, "pa": 3}


def _image(shape_zyx=(10, 12, 14), spacing=(1.5, 2.0, 3.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(np.zeros(shape_zyx, dtype=np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin((-4.0, 7.0, 2.5))
    if direction is not None:
        image.SetDirection(direction)
    return image


def test_label_box_contains_every_labelled_voxel_plus_margin() -> None:
    label = _image()
    array = np.zeros((10, 12, 14), np.uint8)
    array[4, 5, 6] = 1
    array[6, 7, 9] = 2
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(_image())
    box = label_box(label, margin_mm=3.0)
    # Margins in voxels: ceil(3 / 1.5) = 2 along x, ceil(3 / 2) = 2 along y, ceil(3 / 3) = 1 along z.
    assert box == CropBox(start=(4, 3, 3), size=(8, 7, 5))
    z, y, x = np.nonzero(array)
    assert box.contains_index(np.stack([x, y, z], axis=1)).all()


def test_label_box_is_clipped_to_the_image() -> None:
    array = np.zeros((10, 12, 14), np.uint8)
    array[0, 11, 13] = 1
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(_image())
    assert label_box(label, margin_mm=30.0) == CropBox(start=(0, 0, 0), size=(14, 12, 10))


def test_empty_label_is_refused() -> None:
    with pytest.raises(DataError, match="the label of case 'c' is empty"):
        label_box(_image(), 5.0, "c")


@pytest.mark.parametrize("direction", [None, (0, 1, 0, -1, 0, 0, 0, 0, 1)])
def test_enclosing_box_of_a_box_corners_is_the_box(direction) -> None:
    image = _image(direction=direction)
    box = CropBox(start=(2, 3, 1), size=(7, 5, 6))
    assert enclosing_box(image, box_corners(image, box)) == box


def test_box_grid_has_the_configured_shape_and_covers_the_box() -> None:
    image = _image()
    box = CropBox(start=(2, 3, 1), size=(8, 6, 5))
    grid = box_grid(image, box, (16, 12, 10))
    assert grid.GetSize() == (16, 12, 10)
    # Box extent in mm (8*1.5, 6*2, 5*3) over the target shape.
    assert np.allclose(grid.GetSpacing(), (12 / 16, 12 / 12, 15 / 10))
    low = np.asarray(image.TransformContinuousIndexToPhysicalPoint((1.5, 2.5, 0.5)))
    first = np.asarray(grid.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)))
    last = np.asarray(grid.TransformContinuousIndexToPhysicalPoint((15.5, 11.5, 9.5)))
    assert np.allclose(first, low)
    assert np.allclose(last - first, (12.0, 12.0, 15.0))


def test_resampling_onto_a_same_size_box_grid_equals_cropping() -> None:
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray(rng.random((10, 12, 14)).astype(np.float32))
    image.CopyInformation(_image())
    box = CropBox(start=(2, 3, 1), size=(8, 6, 5))
    resampled = resample_onto(image, box_grid(image, box, box.size))
    assert np.allclose(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(crop(image, box)))
    label = sitk.Cast(image * 3, sitk.sitkUInt8)
    nearest = resample_onto(label, box_grid(image, box, box.size), is_label=True)
    assert np.array_equal(sitk.GetArrayFromImage(nearest), sitk.GetArrayFromImage(crop(label, box)))


def test_resample_to_spacing_keeps_the_physical_extent() -> None:
    image = sitk.GetImageFromArray(np.ones((10, 12, 14), np.float32))
    image.CopyInformation(_image())
    coarse = resample_to_spacing(image, np.array([3.0, 3.0, 3.0]))
    assert coarse.GetSpacing() == (3.0, 3.0, 3.0)
    assert coarse.GetSize() == (7, 8, 10)
    assert np.allclose(
        coarse.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)),
        image.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)),
    )
    assert resample_to_spacing(image, np.array([1.0, 1.0, 1.0])) is image


def test_ct_window_and_mri_percentiles_scale_to_unit_range() -> None:
    hu = np.array([-1000.0, -200.0, 300.0, 800.0, 2000.0], np.float32)
    assert np.allclose(scale_intensities(hu, "ct", (-200, 800), (1, 99)), [0, 0, 0.5, 1, 1])
    mri = np.arange(101, dtype=np.float32)
    scaled = scale_intensities(mri, "mri", (-200, 800), (10, 90))
    assert scaled.dtype == np.float32
    assert np.allclose(scaled[[0, 10, 50, 90, 100]], [0, 0, 0.5, 1, 1])
    with pytest.raises(DataError, match="case 'flat' has constant intensity"):
        scale_intensities(np.ones(10, np.float32), "mri", (0, 1), (1, 99), "flat")


def test_smoothing_schedule_is_about_isotropic_in_mm() -> None:
    # ACDC-like voxels: 1.5 mm in plane, 10 mm slices; levels coarse to fine.
    assert smoothing_schedule((1.5, 1.5, 10.0), 3) == ["4", "4", "1", "2", "2", "1", "1", "1", "1"]


def test_mean_dice_matches_simpleitk() -> None:
    rng = np.random.default_rng(3)
    first = rng.integers(0, 4, (8, 9, 10)).astype(np.uint8)
    second = np.where(rng.random((8, 9, 10)) < 0.7, first, rng.integers(0, 4, (8, 9, 10))).astype(
        np.uint8
    )
    measures = sitk.LabelOverlapMeasuresImageFilter()
    scores = []
    for cls in (1, 2, 3):
        measures.Execute(
            sitk.GetImageFromArray((first == cls).astype(np.uint8)),
            sitk.GetImageFromArray((second == cls).astype(np.uint8)),
        )
        scores.append(measures.GetDiceCoefficient())
    assert mean_dice(first, second, 3) == pytest.approx(np.mean(scores))
    # A class absent from both maps does not count; identical maps score 1.
    assert mean_dice(first, first, 5) == pytest.approx(1.0)
    pairwise = mean_pairwise_dice({"a": first, "b": second, "c": first}, 3)
    assert pairwise["a"] == pytest.approx((mean_dice(first, second, 3) + 1.0) / 2)


def test_reference_auto_prefers_an_unlabelled_case() -> None:
    cases = [
        CaseFiles("ct_test_2001", "ct_test_2001", Path("a"), None),
        CaseFiles("ct_train_1001", "ct_train_1001", Path("b"), Path("c")),
    ]
    assert choose_reference(cases, "auto").id == "ct_test_2001"
    assert choose_reference(cases[1:], "auto").id == "ct_train_1001"
    assert choose_reference(cases, "ct_train_1001").id == "ct_train_1001"
    with pytest.raises(ConfigError) as error:
        choose_reference(cases, "nobody")
    assert str(error.value) == (
        "config key 'preprocess.reference': case 'nobody' is not in the cohort; "
        "use 'auto' or one of the case ids"
    )


def _arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_explicit_flags_override_the_config(repo_root: Path, tmp_path: Path) -> None:
    settings = settings_from_arguments(
        _arguments(
            "--config", str(repo_root / "config" / "config.yaml"),
            "--out", str(tmp_path),
            "--target-shape", "32", "32", "16",
            "--labels", "lv=500", "myo=205",
        )
    )  # fmt: skip
    assert settings.target_shape_xyz == (32, 32, 16)
    assert settings.labels == {"lv": 500, "myo": 205}
    assert settings.ct_window == (-200.0, 800.0)
    with pytest.raises(ConfigError, match="give --config, or at least --data-dir and --labels"):
        settings_from_arguments(_arguments("--out", str(tmp_path)))
    with pytest.raises(ConfigError, match="--labels entry 'lv:500' must look like NAME=VALUE"):
        settings_from_arguments(
            _arguments("--out", str(tmp_path), "--data-dir", str(tmp_path), "--labels", "lv:500")
        )


# --- itk-elastix on the real CTA --------------------------------------------------------


@pytest.fixture(scope="module")
def registrar() -> AffineRegistrar:
    return AffineRegistrar(threads=1)


@pytest.fixture(scope="module")
def cta(shared_data: Path):
    folder = shared_data / "cta"
    files = CaseFiles("cta", "cta", folder / "ct.nii.gz", folder / "heart1_aorta2_pa3.nii.gz")
    case = load_case(files, CTA_LABELS)
    image = resample_to_spacing(case.image, np.full(3, 4.5))
    label = resample_onto(case.label, image, is_label=True)
    return image, label


def _known_affine(image: sitk.Image) -> sitk.AffineTransform:
    """8 degrees about z, 6 degrees about x, scaling 1.06 / 0.95 / 1.0, a 9 mm shift."""
    centre = image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()])
    known = sitk.AffineTransform(3)
    known.SetCenter(centre)
    known.Rotate(0, 1, np.deg2rad(8))
    known.Rotate(1, 2, np.deg2rad(6))
    known.Scale((1.06, 0.95, 1.0))
    known.SetTranslation((6.0, -5.0, 4.0))
    return known


def test_alignment_undoes_a_known_affine_on_real_ct(registrar, cta) -> None:
    """``moving(p) = fixed(known(p))``, so the registration must find ``known`` inverted."""
    fixed, fixed_label = cta
    known = _known_affine(fixed)
    moving = resample_onto(fixed, fixed, known)
    moving_label = resample_onto(fixed_label, fixed, known, is_label=True)
    result = registrar.register(fixed, moving, "cta")
    assert np.isfinite(result.final_metric)
    assert "Final metric value" in result.log
    heart = label_box(fixed_label, 0.0)
    errors = [
        np.linalg.norm(np.subtract(known.TransformPoint(result.transform.TransformPoint(p)), p))
        for p in box_corners(fixed, heart)
    ]
    # Tolerance: 1 voxel (4.5 mm) at the heart box's corners; measured about 0.5 mm.
    assert max(errors) < 4.5
    realigned = resample_onto(moving_label, fixed, result.transform, is_label=True)
    assert (
        mean_dice(sitk.GetArrayFromImage(realigned), sitk.GetArrayFromImage(fixed_label), 3) > 0.9
    )


def test_registration_is_deterministic(registrar, cta) -> None:
    fixed, _ = cta
    moving = resample_onto(fixed, fixed, _known_affine(fixed))
    first = registrar.register(fixed, moving, "cta").transform
    second = registrar.register(fixed, moving, "cta").transform
    assert first.GetParameters() == second.GetParameters()


def test_carried_box_contains_the_moved_heart(registrar, cta) -> None:
    """The box carried to an unlabelled copy covers its (hidden) labelled voxels."""
    from deeprs.data.ingest import Case
    from deeprs.preprocess.affine import ElastixLog
    from deeprs.preprocess.reference import Reference, carry_box, coarse
    from deeprs.preprocess.space import target_space

    fixed, fixed_label = cta
    known = _known_affine(fixed)
    moving = resample_onto(fixed, fixed, known)
    hidden_label = sitk.GetArrayFromImage(resample_onto(fixed_label, fixed, known, is_label=True))
    box = label_box(fixed_label, 10.0)
    reference = Reference(
        Case("ref", "ref", fixed, fixed_label),
        box,
        "label",
        target_space(fixed, box, (16, 16, 16)),
        crop(fixed, box),
        coarse(fixed),
    )
    carried, alignment = carry_box(
        registrar, reference.target, Case("copy", "copy", moving, None), ElastixLog(None)
    )
    z, y, x = np.nonzero(hidden_label)
    assert carried.contains_index(np.stack([x, y, z], axis=1)).all()
    assert np.isfinite(alignment.elastix_metric) and alignment.figures.problem() is None


def _write_case(folder: Path, name: str, image: sitk.Image, label: sitk.Image | None) -> None:
    kind = "ct_train" if label is not None else "ct_test"
    (folder / kind).mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(folder / kind / f"{name}_image.nii.gz"))
    if label is not None:
        sitk.WriteImage(label, str(folder / kind / f"{name}_label.nii.gz"))


def test_pipeline_writes_the_contract_and_affine_raises_overlap(registrar, cta, tmp_path) -> None:
    """Five affinely moved CTA copies (3 labelled) through the whole chain."""
    fixed, fixed_label = cta
    raw = tmp_path / "raw"
    rng = np.random.default_rng(5)
    hidden: dict[str, np.ndarray] = {}  # labels of every case, written only for ct_train
    for number in range(5):
        transform = sitk.AffineTransform(3)
        transform.SetCenter(
            fixed.TransformContinuousIndexToPhysicalPoint([s / 2 for s in fixed.GetSize()])
        )
        transform.Rotate(0, 1, np.deg2rad(rng.uniform(-10, 10)))
        transform.Scale(tuple(rng.uniform(0.9, 1.1, 3)))
        transform.SetTranslation(tuple(rng.uniform(-8, 8, 3)))
        image = resample_onto(fixed, fixed, transform)
        label = resample_onto(fixed_label, fixed, transform, is_label=True)
        name = f"ct_train_100{number}" if number < 3 else f"ct_test_200{number}"
        _write_case(raw, name, image, label if number < 3 else None)
        hidden[name] = sitk.GetArrayFromImage(label)
    settings = PreprocessSettings(
        raw, "mmwhs", "ct", {"heart": 1, "aorta": 2, "pa": 3}, target_shape_xyz=(24, 20, 16)
    )
    out = tmp_path / "out"
    manifest = preprocess_cohort(settings, out, 1, tmp_path / "elastix.log", registrar)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["reference"] == "ct_test_2003"
    assert manifest["labels"] == {"heart": 1, "aorta": 2, "pa": 3}
    assert [c["labelled"] for c in manifest["cases"]] == [False, False, True, True, True]
    newest_other = max(
        p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    assert (out / "manifest.json").stat().st_mtime_ns >= newest_other
    for entry in manifest["cases"]:
        image = np.load(out / entry["image"])
        assert image.dtype == np.float32 and image.shape == (16, 20, 24)
        assert 0.0 <= image.min() and image.max() <= 1.0
        nifti = sitk.ReadImage(str(out / "nifti" / f"{entry['id']}_image.nii.gz"))
        assert np.allclose(nifti.GetSpacing(), manifest["spacing_xyz"], rtol=1e-5)
        if entry["labelled"]:
            label = np.load(out / entry["label"])
            assert label.dtype == np.uint8 and label.shape == (16, 20, 24) and label.max() <= 3
    # What evaluation reads to score each case on its own grid: the source files as found,
    # their label values and the very affine each case was resampled through.
    assert manifest["label_values"] == {"heart": 1, "aorta": 2, "pa": 3}
    grid = TargetSpace.from_json(manifest["target_space"]).grid()
    records = load_manifest(out / "manifest.json").cases
    for entry in manifest["cases"]:
        case, kind = entry["id"], "ct_train" if entry["labelled"] else "ct_test"
        assert entry["source_image"] == str(raw / kind / f"{case}_image.nii.gz")
        label = str(raw / kind / f"{case}_label.nii.gz") if entry["labelled"] else None
        assert entry["source_label"] == label
        assert records[case].transform_path == out / f"transforms/{case}.tfm"
        affine = sitk.ReadTransform(str(out / entry["transform"]))
        source = load_case(CaseFiles(case, case, Path(entry["source_image"]), None), {}).image
        on_grid = sitk.GetArrayFromImage(resample_onto(source, grid, affine))
        scaled = scale_intensities(on_grid, "ct", settings.ct_window, settings.mri_percentiles)
        np.testing.assert_allclose(scaled, np.load(out / entry["image"]), atol=1e-4)
        if case == manifest["reference"]:
            assert affine.GetParameters() == sitk.AffineTransform(3).GetParameters()
    rows = list(csv.DictReader(open(out / "qc.csv")))
    assert [r["case"] for r in rows] == [c["id"] for c in manifest["cases"]]
    labelled = [r for r in rows if r["labelled"] == "True"]
    before = np.mean([float(r["dice_pairwise_crop"]) for r in labelled])
    after = np.mean([float(r["dice_pairwise_affine"]) for r in labelled])
    assert after > before and after > 0.8
    boxes = json.loads((out / "crop_boxes.json").read_text())["boxes"]
    assert boxes["ct_test_2003"]["source"] == "majority of 3 labelled heart masks carried to it"
    assert boxes["ct_test_2004"]["source"] == "carried from ct_test_2003"
    for case in ("ct_test_2003", "ct_test_2004"):
        # The boxes found without these cases' labels still hold (nearly) all of their heart.
        box = CropBox(tuple(boxes[case]["start_xyz"]), tuple(boxes[case]["size_xyz"]))
        z, y, x = np.nonzero(hidden[case])
        assert box.contains_index(np.stack([x, y, z], axis=1)).mean() > 0.99
    assert boxes["ct_train_1000"]["source"] == "label"
    assert "===== ct_train_1000: affine from start 'headers' =====" in (
        (tmp_path / "elastix.log").read_text()
    )
    plan = json.loads((out / "plan.json").read_text())
    space = manifest["target_space"]
    assert plan["grid"]["size_xyz"] == space["shape_xyz"]
    assert np.allclose(plan["grid"]["spacing_xyz"], space["spacing_xyz"], rtol=1e-5)
    assert (out / plan["images"]["reference_cropped"]).is_file()
    assert (out / "mosaic.png").stat().st_size > 0


@pytest.mark.parametrize("kind", ["rigid", "similarity", "translation"])
def test_rigid_and_translation_registrations_undo_a_known_motion(registrar, cta, kind) -> None:
    """The fallbacks of a collapsed affine: a known rotation, isotropic scale and shift
    (rigid: no scale; translation: shift only) undone."""
    fixed, fixed_label = cta
    known = sitk.Similarity3DTransform()
    known.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([s / 2 for s in fixed.GetSize()]))
    if kind != "translation":
        known.SetRotation((0.0, 0.0, 1.0), float(np.deg2rad(8)))
    if kind == "similarity":
        known.SetScale(1.08)
    known.SetTranslation((6.0, -5.0, 4.0))
    moving = resample_onto(fixed, fixed, known)
    result = registrar.register(fixed, moving, "cta", transform=kind)
    errors = [
        np.linalg.norm(np.subtract(known.TransformPoint(result.transform.TransformPoint(p)), p))
        for p in box_corners(fixed, label_box(fixed_label, 0.0))
    ]
    assert max(errors) < 4.5  # one voxel of the 4.5 mm test grid
