"""Files of the preprocessing step, each written atomically.

Per case: ``images/{id}.npy`` (float32 (z, y, x) in [0, 1]), ``labels/{id}.npy`` (uint8
classes), viewable NIfTI copies on the training grid in ``nifti/``, and ``transforms/{id}.tfm``:
the affine (ITK transform file) that maps grid points to the case's image points, the very
one the case was resampled through, so that evaluation can carry predictions back onto
the case's own grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from deeprs.io import atomic_path, write_image
from deeprs.preprocess.case import CaseOutput


def transform_file(case_id: str) -> str:
    """Where a case's alignment affine lies, relative to the preprocessed folder."""
    return f"transforms/{case_id}.tfm"


def write_case_files(out: Path, output: CaseOutput, grid: sitk.Image) -> None:
    """The arrays, their viewable NIfTI copies and the affine (overwritten when a case is redone)."""
    with atomic_path(out / transform_file(output.case_id)) as temporary:
        sitk.WriteTransform(output.transform, str(temporary))
    for kind, array in (("image", output.image), ("label", output.label)):
        if array is None:
            continue
        with atomic_path(out / f"{kind}s" / f"{output.case_id}.npy") as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, array)
        viewable = sitk.GetImageFromArray(array)
        viewable.CopyInformation(grid)
        write_image(viewable, out / "nifti" / f"{output.case_id}_{kind}.nii.gz")
