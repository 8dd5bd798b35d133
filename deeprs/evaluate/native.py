"""Segmentation scored on each test image's own grid, as nnU-Net evaluates.

The grid scores (``segmentation``) compare S's argmax with the test label resampled onto
the training grid, which is what the paper reports, but that truth is itself an
interpolated copy of the drawn label. ``segmentation_native`` carries S's class
probabilities back onto the image's own grid through the affine preprocessing recorded for
the case (:func:`deeprs.inference.space.probabilities_to_native`, the mapping ``deeprs
predict`` uses), takes the argmax there and compares it with the label file as drawn, with
distances in the image's own spacing.

It needs what preprocessing records since this was added: the source files and the
transform of every case and the source label values. A manifest without them is scored on
the grid only, with one log line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from deeprs.data.cases import Manifest
from deeprs.data.ingest import check_same_grid, label_to_classes, read_volume
from deeprs.errors import DataError
from deeprs.inference.space import native_label_map, probabilities_to_native
from deeprs.preprocess.space import TargetSpace

log = logging.getLogger(__name__)


@dataclass
class NativeCase:
    """A test case on its own grid: the image (its geometry is the scoring grid), the label
    as classes ``(z, y, x)`` and the affine mapping training-grid points to image points."""

    image: sitk.Image
    classes: np.ndarray
    affine: sitk.Transform

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        x, y, z = self.image.GetSpacing()
        return (z, y, x)


def _existing(path: Path | None, what: str, case_id: str, manifest: Manifest, fix: str) -> Path:
    if path is None or not path.is_file():
        raise DataError(
            f"{what} '{path}' of test case '{case_id}' (manifest '{manifest.path}') does not "
            f"exist; {fix}"
        )
    return path


class NativeScoring:
    """Reads each test case's source files and carries grid probabilities onto them."""

    def __init__(self, manifest: Manifest) -> None:
        assert manifest.label_values is not None and manifest.target_space is not None
        self.manifest = manifest
        self.label_values = manifest.label_values
        self.grid = TargetSpace.from_json(manifest.target_space).grid()

    @classmethod
    def for_cases(cls, manifest: Manifest, case_ids: list[str]) -> NativeScoring | None:
        """The scorer, or None (logged) when the manifest predates native scoring."""
        records = [manifest.record(case_id) for case_id in case_ids]
        recorded = (
            manifest.label_values is not None
            and manifest.target_space is not None
            and all(r.source_image and r.source_label and r.transform_path for r in records)
        )
        if not recorded:
            log.warning(
                "manifest '%s' does not record the test cases' source files and transforms: "
                "segmentation is scored on the training grid only; rerun preprocessing to "
                "also score it on each image's own grid",
                manifest.path,
            )
            return None
        scoring = cls(manifest)
        for case_id in case_ids:  # a missing file stops the run before S runs
            scoring.files(case_id)
        return scoring

    def files(self, case_id: str) -> tuple[Path, Path, Path]:
        """The case's source image, source label and transform; one line for a missing one."""
        record = self.manifest.record(case_id)
        restore = (
            "restore the cohort folder (data.dir) at that path, relative to the working "
            "directory, or rerun preprocessing where it now lies"
        )
        return (
            _existing(record.source_image, "source image", case_id, self.manifest, restore),
            _existing(record.source_label, "source label", case_id, self.manifest, restore),
            _existing(
                record.transform_path, "transform", case_id, self.manifest, "rerun preprocessing"
            ),
        )

    def case(self, case_id: str) -> NativeCase:
        """The case's image, label classes and affine."""
        image_path, label_path, transform_path = self.files(case_id)
        image, label = read_volume(image_path), read_volume(label_path)
        check_same_grid(image, label, image_path, label_path)
        classes = sitk.GetArrayFromImage(label_to_classes(label, self.label_values, label_path))
        return NativeCase(image, classes, sitk.ReadTransform(str(transform_path)))

    def predicted_classes(self, probabilities: np.ndarray, case: NativeCase) -> np.ndarray:
        """The argmax ``(z, y, x)`` of grid ``probabilities`` carried onto the case's grid."""
        native = probabilities_to_native(probabilities, self.grid, case.image, case.affine)
        classes = list(range(1, probabilities.shape[0]))
        return sitk.GetArrayFromImage(native_label_map(case.image, native, classes))
