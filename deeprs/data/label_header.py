"""``deeprs fix-label-header IMAGE LABEL OUT``: the label's voxels with the image's geometry.

For a label whose header was lost (identity direction, origin 0, spacing 1) while its
voxels still match the image one for one. The inputs are only read; the copy is written
atomically to OUT, which must be another file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import SimpleITK as sitk

from deeprs.data.ingest import read_volume
from deeprs.errors import DataError
from deeprs.io import atomic_path


def copy_image_geometry(image_path: Path, label_path: Path, out_path: Path) -> sitk.Image:
    """Write the label's voxels with the image's origin, spacing and direction to ``out_path``."""
    resolved = {Path(image_path).resolve(), Path(label_path).resolve()}
    if Path(out_path).resolve() in resolved:
        raise DataError(f"output '{out_path}' is one of the inputs; inputs are never changed")
    image = read_volume(image_path)
    label = read_volume(label_path)
    if image.GetSize() != label.GetSize():
        raise DataError(
            f"label '{label_path}' has {label.GetSize()} voxels and image '{image_path}' "
            f"{image.GetSize()}: they are not one voxel grid, so copying the header would be "
            "wrong; resample the label onto the image grid instead"
        )
    fixed = sitk.Image(label)
    fixed.CopyInformation(image)
    with atomic_path(out_path) as temporary:
        sitk.WriteImage(fixed, str(temporary), useCompression=True)
    return fixed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="the image whose geometry is right")
    parser.add_argument("label", type=Path, help="the label with the same voxel grid")
    parser.add_argument("out", type=Path, help="where to write the fixed copy of the label")


def run(args: argparse.Namespace) -> int:
    copy_image_geometry(args.image, args.label, args.out)
    print(f"wrote {args.out}: voxels of {args.label} with the geometry of {args.image}")
    return 0
