"""``mosaic.png``: every case in three orthogonal planes, before and after alignment.

One row per case (reference first): the planes through the training grid's centre across
z, y and x, first placed by the heart box only ("crop only"), then aligned. The reference's
label (for an unlabelled reference: the consensus of the aligned labelled cases) is drawn
as contours over every panel, so a misaligned case shows anatomy leaving the contours. Pixels are drawn at their physical size (mm), with z (the slice axis) up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deeprs.io import atomic_path  # noqa: E402
from deeprs.palette import structure_colours  # noqa: E402
from deeprs.preprocess.case import CaseOutput, mid_planes  # noqa: E402

PLANES = ("z plane (x right, y down)", "y plane (x right, z up)", "x plane (y right, z up)")


def _extents(shape_zyx: Sequence[int], spacing_xyz: Sequence[float]) -> list[list[float]]:
    """imshow extents (mm) of the three planes of :func:`mid_planes`."""
    nz, ny, nx = shape_zyx
    sx, sy, sz = spacing_xyz
    return [[0, nx * sx, ny * sy, 0], [0, nx * sx, 0, nz * sz], [0, ny * sy, 0, nz * sz]]


def write_qc_mosaic(
    path: str | Path,
    outputs: Sequence[CaseOutput],
    reference_id: str,
    contour_label: np.ndarray | None,
    contour_source: str,
    spacing_xyz: Sequence[float],
    structure_names: Sequence[str],
    flagged: Sequence[str] = (),
) -> None:
    """Draw the mosaic with ``contour_label`` (described by ``contour_source``) over every
    panel; ``flagged`` cases get a red title."""
    ordered = sorted(outputs, key=lambda o: o.case_id != reference_id)
    shape = ordered[0].image.shape
    extents = _extents(shape, spacing_xyz)
    widths = [extent[1] for extent in extents] * 2
    row_height = 1.5
    figure, axes = plt.subplots(
        len(ordered),
        6,
        figsize=(13.0, row_height * len(ordered) + 0.8),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    colours = structure_colours(list(structure_names))
    contour_planes = mid_planes(contour_label) if contour_label is not None else None
    for row, output in enumerate(ordered):
        panels = list(output.planes_before) + list(output.planes_after)
        for column, pixels in enumerate(panels):
            axis = axes[row, column]
            plane = column % 3
            origin = "upper" if plane == 0 else "lower"
            extent = extents[plane]
            axis.imshow(
                pixels, cmap="gray", vmin=0, vmax=1, extent=extent, origin=origin, aspect="equal"
            )
            if contour_planes is not None:
                classes = contour_planes[plane]
                for cls, colour in enumerate(colours, start=1):
                    mask = classes == cls
                    if mask.any() and not mask.all():
                        axis.contour(
                            mask.astype(float),
                            levels=[0.5],
                            colors=[colour],
                            linewidths=0.6,
                            extent=extent,
                            origin=origin,
                        )
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                stage = "crop only" if column < 3 else "aligned"
                axis.set_title(f"{stage}: {PLANES[plane]}", fontsize=6)
        name = output.case_id + (" (reference)" if output.case_id == reference_id else "")
        axes[row, 0].set_ylabel(
            name, fontsize=6, color="#CC0000" if output.case_id in flagged else "black"
        )
    handles = [
        plt.Line2D([], [], color=colours[i], label=name) for i, name in enumerate(structure_names)
    ]
    figure.legend(
        handles=handles, loc="lower center", ncol=len(structure_names), fontsize=7, frameon=False
    )
    height = row_height * len(ordered) + 0.8
    # Placed in inches from the top: suptitle's default (2 % of the height) lands inside the
    # first row of a tall mosaic.
    figure.suptitle(
        f"Each case before and after alignment to {reference_id}, {contour_source}; "
        "flagged cases (see qc.csv) in red",
        fontsize=8,
        y=1 - 0.08 / height,
        va="top",
    )
    figure.tight_layout(rect=(0, 0.5 / height, 1, 1 - 0.35 / height))
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=80, format="png")
    plt.close(figure)
