"""Files of the preprocessing step, each written atomically.

Per case: ``images/{id}.npy`` (float32 (z, y, x) in [0, 1]), ``labels/{id}.npy`` (uint8
classes) and viewable NIfTI copies on the training grid in ``nifti/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from deeprs.io import atomic_path, write_image
from deeprs.preprocess.case import CaseOutput


def write_case_files(out: Path, output: CaseOutput, grid: sitk.Image) -> None:
    """The arrays and their viewable NIfTI copies (overwritten when a case is redone)."""
    for kind, array in (("image", output.image), ("label", output.label)):
        if array is None:
            continue
        with atomic_path(out / f"{kind}s" / f"{output.case_id}.npy") as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, array)
        viewable = sitk.GetImageFromArray(array)
        viewable.CopyInformation(grid)
        write_image(viewable, out / "nifti" / f"{output.case_id}_{kind}.nii.gz")
