"""A PNG overview of a few cases: axial, coronal and sagittal slices through the heart.

Each row is one case: the axial CT alone, then axial, coronal and sagittal slices with its
label overlaid in one colour per structure (shared legend), so a person sees at a glance
both the image and what the phantom (or any MM-WHS-style cohort) labels.
Views are radiological: axial with the patient's left on the right and anterior up,
coronal and sagittal with superior up; pixels are drawn at their physical size.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from deeprs.io import atomic_path  # noqa: E402
from deeprs.palette import structure_colours  # noqa: E402

WINDOW_HU = (-400.0, 700.0)


def _read(path: str | os.PathLike[str]) -> tuple[np.ndarray, tuple[float, float, float]]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def write_cohort_mosaic(
    cases: list[tuple[str, Path, Path]],
    labels: dict[str, int],
    out_path: str | os.PathLike[str],
) -> None:
    """Write one row per ``(case id, image file, label file)`` with ``labels`` (name -> value) overlaid."""
    names = list(labels)
    palette = structure_colours(names)
    colours = ListedColormap(palette)
    figure, axes = plt.subplots(
        len(cases), 4, figsize=(14.0, 3.8 * len(cases) + 0.6), squeeze=False
    )
    for row, (case_id, image_path, label_path) in enumerate(cases):
        image, (sx, sy, sz) = _read(image_path)
        label, _ = _read(label_path)
        classes = np.zeros(label.shape, dtype=np.int16)
        for index, name in enumerate(names, start=1):
            classes[label == labels[name]] = index
        z, y, x = (
            np.round(np.argwhere(classes > 0).mean(axis=0)).astype(int)
            if classes.any()
            else np.array(classes.shape) // 2
        )
        nz, ny, nx = image.shape
        views = [
            ("axial CT", image[z], np.zeros_like(classes[z]), [0, nx * sx, ny * sy, 0]),
            ("axial", image[z], classes[z], [0, nx * sx, ny * sy, 0]),
            ("coronal", image[::-1, y, :], classes[::-1, y, :], [0, nx * sx, 0, nz * sz]),
            ("sagittal", image[::-1, :, x], classes[::-1, :, x], [0, ny * sy, 0, nz * sz]),
        ]
        for column, (view, pixels, overlay, extent) in enumerate(views):
            axis = axes[row, column]
            axis.imshow(pixels, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], extent=extent)
            masked = np.ma.masked_equal(overlay, 0)
            axis.imshow(
                masked,
                cmap=colours,
                vmin=0.5,
                vmax=len(names) + 0.5,
                alpha=0.45,
                extent=extent,
                interpolation="nearest",
            )
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(f"{case_id} {view}", fontsize=9)
    handles = [
        Patch(color=palette[i], label=f"{name} ({labels[name]})") for i, name in enumerate(names)
    ]
    figure.legend(handles=handles, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    figure.suptitle(
        f"window {WINDOW_HU[0]:.0f} to {WINDOW_HU[1]:.0f} HU; axial: patient left on the right",
        fontsize=9,
    )
    figure.tight_layout(rect=(0, 0.04, 1, 0.97))
    with atomic_path(out_path) as temporary:
        figure.savefig(temporary, dpi=90, format="png")
    plt.close(figure)
