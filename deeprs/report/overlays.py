"""Figs. 6 and 7: one axial slice of a test case per method, structure contours over the image.

Registration (Fig. 6): the first two test cases of a split form the pair (moving = the
second, fixed = the first); each method's warped moving image is drawn with its warped
moving label. Segmentation (Fig. 7): the first test case, with each method's predicted
label. Predictions come from each method's ``model.pt`` through the functions that
``deeprs evaluate`` scores (:mod:`deeprs.evaluate.engine`, same padding and autocast), so a
panel shows the scored prediction, and its title gives its mean Dice over structures. This
step only needs the manifest, a split and the models; it is a rule of its own so that the
tables never wait for it.

Run as ``deeprs overlays --manifest ... --split ... --results ...``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from torch import nn  # noqa: E402

from deeprs.data.cases import Manifest, Split, load_manifest, load_split  # noqa: E402
from deeprs.device import add_runtime_arguments, select_device, set_threads  # noqa: E402
from deeprs.errors import DataError  # noqa: E402
from deeprs.evaluate.engine import (  # noqa: E402
    load_test_volumes,
    predict_pairs,
    predict_segmentation,
)
from deeprs.evaluate.metrics import dice, mean_dice  # noqa: E402
from deeprs.inference.model import TrainedModel, load_model_file  # noqa: E402
from deeprs.inference.networks import use_training_layout  # noqa: E402
from deeprs.io import atomic_path  # noqa: E402
from deeprs.methods import get_method  # noqa: E402
from deeprs.nets.padding import NETWORK_MULTIPLE  # noqa: E402
from deeprs.palette import structure_colour, structure_title  # noqa: E402
from deeprs.report.paper import method_title  # noqa: E402

LOG = logging.getLogger(__name__)

TARGET_NAMES = {"registration": "fixed label (dashed)", "segmentation": "ground truth (dashed)"}


@dataclass
class Panel:
    """One image of the figure: a 2-D slice, its class map (0 = background) and a title.

    ``target``, when given, is drawn dashed under ``label``: the fixed label under a warped
    one, the ground truth under a prediction, so a mismatch shows without flipping panels.
    """

    title: str
    image: np.ndarray | None
    label: np.ndarray | None
    target: np.ndarray | None = None
    dice: float | None = None

    @property
    def heading(self) -> str:
        """The title, with the mean Dice (whole volume) of a scored prediction below it."""
        return self.title if self.dice is None else f"{self.title}\nDice {self.dice:.3f}"


def pick_slice(label: np.ndarray) -> int:
    """The axial index (axis 0 of a ``(z, y, x)`` map) showing the most structures.

    Ties go to the slice with the most foreground voxels, so the heart is cut near its
    middle rather than at an edge where one voxel of each structure happens to show.
    """
    if label.ndim != 3:
        raise ValueError(f"a (z, y, x) label map is needed, got shape {label.shape}")
    classes_per_slice = np.array([len(np.unique(plane[plane > 0])) for plane in label])
    foreground_per_slice = (label > 0).reshape(label.shape[0], -1).sum(axis=1)
    return int(np.lexsort((-foreground_per_slice, -classes_per_slice))[0])


def _draw_contours(
    axes: plt.Axes, label: np.ndarray, structures: list[str], linestyle: str, linewidth: float
) -> None:
    for index, structure in enumerate(structures, start=1):
        mask = label == index
        if mask.any():
            axes.contour(
                mask.astype(np.float32),
                levels=[0.5],
                colors=[structure_colour(structure, structures)],
                linestyles=[linestyle],
                linewidths=linewidth,
            )


def draw_panels(
    panels: list[Panel],
    structures: list[str],
    out_path: Path,
    title: str,
    target_name: str = "reference (dashed)",
) -> Path:
    """A grid of panels with one contour colour per structure and a legend of structures."""
    columns = min(len(panels), 6)
    rows = -(-len(panels) // columns)
    # The legend wraps into rows of at most four entries (two per panel) under a figure at
    # least 6.5 inches wide, so that a figure of few panels does not cut it off.
    entries = len(structures) + int(any(panel.target is not None for panel in panels))
    legend_columns = min(entries, max(4, 2 * columns))
    legend_rows = -(-entries // legend_columns)
    legend_height = 0.3 * legend_rows
    figure, axes_grid = plt.subplots(
        rows,
        columns,
        figsize=(max(2.3 * columns, 6.5), 2.8 * rows + 0.4 + legend_height),
        squeeze=False,
    )
    for axes, panel in zip(axes_grid.flat, panels, strict=False):
        axes.set_title(panel.heading, fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
        if panel.image is None:
            axes.set_facecolor("0.92")
            axes.text(0.5, 0.5, "missing", ha="center", va="center", transform=axes.transAxes)
            continue
        axes.imshow(panel.image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        if panel.target is not None:
            _draw_contours(axes, panel.target, structures, linestyle="--", linewidth=0.7)
        if panel.label is not None:
            _draw_contours(axes, panel.label, structures, linestyle="-", linewidth=1.1)
    for axes in list(axes_grid.flat)[len(panels) :]:
        axes.axis("off")
    handles = [
        Line2D([0], [0], color=structure_colour(name, structures), linewidth=2)
        for name in structures
    ]
    names = [structure_title(name) for name in structures]
    if any(panel.target is not None for panel in panels):
        handles.append(Line2D([0], [0], color="0.4", linestyle="--", linewidth=1))
        names.append(target_name)
    figure.legend(
        handles,
        names,
        loc="lower center",
        ncol=legend_columns,
        frameon=False,
        fontsize=9,
    )
    figure.suptitle(title, fontsize=10)
    # h_pad leaves room for the two-line titles (method and Dice) of the rows below the first.
    figure.tight_layout(rect=(0, legend_height / figure.get_figheight(), 1, 1), h_pad=1.5)
    with atomic_path(out_path) as temporary:
        figure.savefig(temporary, format="png", dpi=130)
    plt.close(figure)
    return Path(out_path)


ModelLoader = Callable[[str], dict[str, nn.Module] | None]


def model_loader(results: Path, split_name: str, device: torch.device) -> ModelLoader:
    """Loads ``results/{method}/{split}/model.pt``; None when the file is absent."""

    def load(method: str) -> dict[str, nn.Module] | None:
        path = Path(results) / method / split_name / "model.pt"
        if not path.is_file():
            LOG.warning("%s: no model at %s; its panel shows 'missing'", method, path)
            return None
        model: TrainedModel = load_model_file(path, device)
        return model.networks

    return load


def _multiple(networks: dict[str, nn.Module]) -> int:
    return max([NETWORK_MULTIPLE, *(getattr(n, "size_divisor", 1) for n in networks.values())])


def registration_panels(
    manifest: Manifest,
    split: Split,
    methods: list[str],
    load: ModelLoader,
    device: torch.device,
    cpu_bf16: bool = True,
) -> tuple[list[Panel], int]:
    """Moving, fixed, and one warped moving image per method with registration."""
    if len(split.test) < 2:
        raise DataError(f"split '{split.name}' has fewer than two test cases; no pair to draw")
    fixed_id, moving_id = split.test[0], split.test[1]
    fixed_label = np.asarray(manifest.label(fixed_id))
    z = pick_slice(fixed_label)
    moving_label = np.asarray(manifest.label(moving_id))
    panels = [
        Panel(f"moving {moving_id}", np.asarray(manifest.image(moving_id))[z], moving_label[z]),
        Panel(f"fixed {fixed_id}", np.asarray(manifest.image(fixed_id))[z], fixed_label[z]),
    ]
    for method in dict.fromkeys(methods):
        spec = get_method(method)
        if spec.trains and not spec.registration:
            continue
        models = load(method) if spec.trains else {}
        if models is None:
            panels.append(Panel(method_title(method), None, None))
            continue
        if spec.trains and "registration" not in models:
            raise DataError(
                f"the model of '{method}' for split '{split.name}' has no registration network; retrain it"
            )
        volumes = load_test_volumes(
            manifest, split, device, _multiple(models), [moving_id, fixed_id]
        )
        use_training_layout(models.values(), volumes.padded_shape)
        predicted = predict_pairs(
            volumes, [(moving_id, fixed_id)], models.get("registration"), cpu_bf16, True
        )
        assert predicted.images is not None
        warped_label = predicted.labels[0]
        panels.append(
            Panel(
                method_title(method),
                predicted.images[0][z],
                warped_label[z],
                target=fixed_label[z],
                dice=mean_dice(dice(warped_label, fixed_label, manifest.labels)),
            )
        )
    return panels, z


def segmentation_panels(
    manifest: Manifest,
    split: Split,
    methods: list[str],
    load: ModelLoader,
    device: torch.device,
    cpu_bf16: bool = True,
) -> tuple[list[Panel], int]:
    """The image with its ground truth, and one prediction per method with segmentation."""
    if not split.test:
        raise DataError(f"split '{split.name}' has no test case to draw")
    case_id = split.test[0]
    image, label = np.asarray(manifest.image(case_id)), np.asarray(manifest.label(case_id))
    z = pick_slice(label)
    panels = [Panel(f"ground truth {case_id}", image[z], label[z])]
    for method in dict.fromkeys(methods):
        if not get_method(method).segmentation:
            continue
        models = load(method)
        if models is None:
            panels.append(Panel(method_title(method), None, None))
            continue
        if "segmentation" not in models:
            raise DataError(
                f"the model of '{method}' for split '{split.name}' has no segmentation network; retrain it"
            )
        volumes = load_test_volumes(manifest, split, device, _multiple(models), [case_id])
        use_training_layout(models.values(), volumes.padded_shape)
        predicted = predict_segmentation(volumes, case_id, models["segmentation"], cpu_bf16)
        panels.append(
            Panel(
                method_title(method),
                image[z],
                predicted[z],
                target=label[z],
                dice=mean_dice(dice(predicted, label, manifest.labels)),
            )
        )
    return panels, z


def draw_overlays(
    manifest_path: Path,
    split_path: Path,
    results: Path,
    methods: list[str],
    out_dir: Path,
    device: torch.device,
    cpu_bf16: bool = True,
) -> list[Path]:
    """``overlays_registration.png`` and ``overlays_segmentation.png`` in ``out_dir``."""
    manifest = load_manifest(manifest_path)
    split = load_split(split_path, manifest)
    structures = list(manifest.labels)
    load = model_loader(results, split.name, device)
    written = []
    for task, build in (
        ("registration", registration_panels),
        ("segmentation", segmentation_panels),
    ):
        panels, z = build(manifest, split, methods, load, device, cpu_bf16)
        title = f"{task.capitalize()}, {split.name}, axial slice {z}"
        out_path = Path(out_dir) / f"overlays_{task}.png"
        written.append(draw_panels(panels, structures, out_path, title, TARGET_NAMES[task]))
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True, help="split file, e.g. fold_0.json")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--methods", nargs="+", required=True, help="methods in figure order")
    parser.add_argument("--out-dir", type=Path, default=Path("results/report"))
    add_runtime_arguments(parser, "torch")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    device = select_device(args.device)
    written = draw_overlays(
        args.manifest, args.split, args.results, args.methods, args.out_dir, device, args.cpu_bf16
    )
    LOG.info("wrote %s", ", ".join(str(path) for path in written))
    return 0
