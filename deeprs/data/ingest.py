"""Find, read and validate the raw cases of a cohort folder.

Every case leaves this module as SimpleITK images in one canonical orientation (LPS: the
array axes x, y, z run towards the patient's left, posterior and superior, i.e. an
identity direction matrix for axis-aligned scans), with the image as float32 and the label
as contiguous classes ``0..K`` in the order of the config's ``data.labels`` table. Every
problem that would silently corrupt training (a truncated file, a label on another grid,
an unknown label value, NaN intensities) stops here with one sentence naming the file.
Input files are only ever read.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel
import numpy as np
import SimpleITK as sitk

from deeprs.data.grouping import DEFAULT_SUBJECT_PATTERN, subject_of
from deeprs.errors import DataError

log = logging.getLogger(__name__)

CANONICAL_ORIENTATION = "LPS"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
LAYOUTS = ("mmwhs", "acdc")
# Relative tolerance on spacing, and absolute tolerance on direction cosines, between an
# image and its label: header round-off differs between writers, real mismatches do not.
SPACING_RTOL = 1e-3
DIRECTION_ATOL = 1e-3
# Origins may differ by float round-off; a shift of half a voxel or more is a real mismatch.
ORIGIN_TOLERANCE_VOXELS = 0.5


@dataclass(frozen=True)
class CaseFiles:
    """Where one case lives on disk; ``label`` is None for an unlabelled case."""

    id: str
    subject: str
    image: Path
    label: Path | None


@dataclass
class Case:
    """One validated case in canonical orientation; ``label`` holds classes 0..K or is None."""

    id: str
    subject: str
    image: sitk.Image
    label: sitk.Image | None

    @property
    def labelled(self) -> bool:
        return self.label is not None


def _strip_suffix(name: str) -> str | None:
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _files_by_stem(folder: Path, ending: str) -> dict[str, Path]:
    """Image files in ``folder`` whose name (without suffix) ends with ``ending``, by stem."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        stem = _strip_suffix(path.name)
        if stem is None or not stem.endswith(ending) or path.name.startswith("."):
            continue
        case_id = stem[: len(stem) - len(ending)] if ending else stem
        if case_id in found:
            raise DataError(
                f"case id '{case_id}' appears twice ('{found[case_id]}' and '{path}'); "
                "keep one file per case"
            )
        found[case_id] = path
    return found


def _mmwhs_cases(folder: Path) -> list[CaseFiles]:
    """``ct_train/*_image`` with ``*_label`` beside it, ``ct_test/*_image`` without."""
    cases: list[CaseFiles] = []
    train_images = _files_by_stem(folder / "ct_train", "_image")
    train_labels = _files_by_stem(folder / "ct_train", "_label")
    for case_id in sorted(set(train_labels) - set(train_images)):
        raise DataError(
            f"label '{train_labels[case_id]}' has no image '{case_id}_image' beside it; "
            "add the image or remove the label"
        )
    for case_id, image in train_images.items():
        cases.append(CaseFiles(case_id, case_id, image, train_labels.get(case_id)))
    test_images = _files_by_stem(folder / "ct_test", "_image")
    for case_id, image in test_images.items():
        cases.append(CaseFiles(case_id, case_id, image, None))
    return cases


def _acdc_cases(folder: Path) -> list[CaseFiles]:
    """``images/{id}`` with ``labels/{id}_gt`` (optional: without it the case is unlabelled)."""
    images = _files_by_stem(folder / "images", "")
    labels = _files_by_stem(folder / "labels", "_gt")
    for case_id in sorted(set(labels) - set(images)):
        raise DataError(
            f"label '{labels[case_id]}' has no image 'images/{case_id}'; "
            "add the image or remove the label"
        )
    return [
        CaseFiles(case_id, case_id, image, labels.get(case_id)) for case_id, image in images.items()
    ]


def discover_cases(
    folder: str | Path, layout: str, subject_pattern: str = DEFAULT_SUBJECT_PATTERN
) -> list[CaseFiles]:
    """Every case of a cohort folder in the given layout, sorted by id, with its subject
    (:func:`deeprs.data.grouping.subject_of` under ``subject_pattern``)."""
    folder = Path(folder)
    if layout not in LAYOUTS:
        raise DataError(f"data layout '{layout}' is not known; use one of {', '.join(LAYOUTS)}")
    if not folder.is_dir():
        raise DataError(f"data folder '{folder}' does not exist; set data.dir to your cohort")
    cases = _mmwhs_cases(folder) if layout == "mmwhs" else _acdc_cases(folder)
    if not cases:
        expected = (
            "ct_train/*_image.nii.gz and ct_test/*_image.nii.gz"
            if layout == "mmwhs"
            else "images/*.nii.gz and labels/*_gt.nii.gz"
        )
        raise DataError(f"data folder '{folder}' holds no {layout} cases; expected {expected}")
    ids = [case.id for case in cases]
    duplicates = sorted({case_id for case_id in ids if ids.count(case_id) > 1})
    if duplicates:
        raise DataError(
            f"data folder '{folder}': case id '{duplicates[0]}' is both labelled and "
            "unlabelled; give each case one id"
        )
    grouped = [replace(case, subject=subject_of(case.id, subject_pattern)) for case in cases]
    return sorted(grouped, key=lambda case: case.id)


def _check_nifti_data(path: Path) -> None:
    """Read a NIfTI file's voxels with nibabel: a truncated file or NaN/Inf stops here.

    SimpleITK's NIfTI reader accepts a truncated ``.nii.gz`` (the missing voxels come back
    as garbage) and turns NaN into 0, so neither problem would be seen through it.
    """
    try:
        nifti = nibabel.load(str(path))
        voxels = np.asanyarray(nifti.dataobj)
    except (
        OSError,
        EOFError,
        ValueError,
        zlib.error,
        nibabel.filebasedimages.ImageFileError,
    ) as error:
        raise DataError(
            f"'{path}' cannot be read as an image ({error}); replace the file "
            "(it may be truncated or not a NIfTI/MHA/NRRD file)"
        ) from None
    if np.issubdtype(voxels.dtype, np.floating) and not np.isfinite(voxels).all():
        count = int(voxels.size - np.isfinite(voxels).sum())
        raise DataError(f"'{path}' has {count} NaN or infinite voxel(s); fix or replace the file")


def read_volume(path: str | Path) -> sitk.Image:
    """Read a 3D NIfTI/MHA/NRRD file; refuse unreadable, non-3D and non-finite volumes."""
    path = Path(path)
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    # ACDC's headers trigger an ITK warning on every read ("unexpected scales in sform")
    # that is harmless: the qform is used. Keep the log readable.
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown"
        raise DataError(
            f"'{path}' cannot be read as an image ({reason}); replace the file "
            "(it may be truncated or not a NIfTI/MHA/NRRD file)"
        ) from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    if path.name.endswith((".nii", ".nii.gz")):
        _check_nifti_data(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            f"'{path}' is a {image.GetDimension()}D image with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel; "
            "give one 3D scalar volume per file"
        )
    if min(image.GetSize()) < 2:
        raise DataError(
            f"'{path}' has size {image.GetSize()}; a 3D volume needs 2+ voxels per axis"
        )
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        count = int(np.size(array) - np.isfinite(array).sum())
        raise DataError(f"'{path}' has {count} NaN or infinite voxel(s); fix or replace the file")
    return image


def check_same_grid(
    image: sitk.Image, label: sitk.Image, image_path: Path, label_path: Path
) -> None:
    """Raise DataError unless the label lies voxel for voxel on the image's grid."""
    problem = None
    if image.GetSize() != label.GetSize():
        problem = f"size {label.GetSize()} differs from the image's {image.GetSize()}"
    elif not np.allclose(image.GetSpacing(), label.GetSpacing(), rtol=SPACING_RTOL, atol=0):
        problem = (
            f"spacing {tuple(round(s, 4) for s in label.GetSpacing())} differs from the "
            f"image's {tuple(round(s, 4) for s in image.GetSpacing())}"
        )
    elif not np.allclose(image.GetDirection(), label.GetDirection(), atol=DIRECTION_ATOL):
        problem = "orientation (direction cosines) differs from the image's"
    else:
        shift = np.abs(np.subtract(image.GetOrigin(), label.GetOrigin()))
        if (shift > ORIGIN_TOLERANCE_VOXELS * np.asarray(image.GetSpacing())).any():
            problem = (
                f"origin {tuple(round(o, 2) for o in label.GetOrigin())} differs from the "
                f"image's {tuple(round(o, 2) for o in image.GetOrigin())}"
            )
    if problem:
        raise DataError(
            f"label '{label_path}' does not match image '{image_path}': {problem}; "
            "resample the label onto the image grid"
        )


def label_to_classes(label: sitk.Image, labels: Mapping[str, int], path: Path) -> sitk.Image:
    """Map the label values of ``labels`` (name -> value) to classes 1..K in table order."""
    values = sitk.GetArrayFromImage(label)
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all() or not np.equal(np.round(values), values).all():
            raise DataError(
                f"label '{path}' holds non-integer values; labels must be integer classes"
            )
        values = values.astype(np.int64)
    present = np.unique(values)
    known = {0, *labels.values()}
    unknown = [int(v) for v in present if int(v) not in known]
    if unknown:
        table = ", ".join(f"{name}: {value}" for name, value in labels.items())
        raise DataError(
            f"label '{path}' has value(s) {unknown} that are not in data.labels ({table}); "
            "add them to the config's label table"
        )
    classes = np.zeros(values.shape, dtype=np.uint8)
    for index, (name, value) in enumerate(labels.items(), start=1):
        mask = values == value
        if not mask.any():
            log.warning("label '%s': structure '%s' (value %d) is absent", path, name, value)
        classes[mask] = index
    result = sitk.GetImageFromArray(classes)
    result.CopyInformation(label)
    return result


def canonical(image: sitk.Image) -> sitk.Image:
    """Reorient to LPS by permuting and flipping axes only (no interpolation)."""
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION)


def load_case(files: CaseFiles, labels: Mapping[str, int]) -> Case:
    """Read, validate and canonicalise one case (image as float32, label as uint8 classes)."""
    if len(labels) > 255:
        raise DataError("data.labels has more than 255 structures; uint8 classes cannot hold them")
    image = read_volume(files.image)
    label = None
    if files.label is not None:
        raw_label = read_volume(files.label)
        check_same_grid(image, raw_label, files.image, files.label)
        label = canonical(label_to_classes(raw_label, labels, files.label))
    image = canonical(sitk.Cast(image, sitk.sitkFloat32))
    return Case(id=files.id, subject=files.subject, image=image, label=label)
