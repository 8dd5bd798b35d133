"""``deeprs predict``: label maps of new images, each on the image's own grid.

Each image (NIfTI, MHA or NRRD; any orientation and spacing) is aligned to the bundle's
reference as in preprocessing, segmented by S on the training grid, and its class
probabilities are resampled back onto the image's grid (same size, spacing, origin and
direction as the input), then written with the cohort's label values. Several bundles
(``--folds``) are ensembled by averaging their probabilities; bundles that share a
preprocessing plan (the folds of one study) share one alignment per image.

Prediction runs in two passes so that a new image is cropped as evaluation crops a
labelled test case. A new image has no label, so the first pass crops it by the heart box
carried from the reference (a coarse alignment of the whole scan). Its label map then
gives the box by the labelled-case rule (bounding box of all structures plus the plan's
crop margin), and the second pass aligns and segments again from that box; its
probabilities are the result. ``--single-pass`` keeps the first pass's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from deeprs.data.ingest import IMAGE_SUFFIXES
from deeprs.device import add_runtime_arguments, select_device, set_threads
from deeprs.errors import DataError
from deeprs.inference.bundle import BUNDLE_FILE, Bundle, load_bundle
from deeprs.inference.networks import segmentation_probabilities, volume_tensor
from deeprs.inference.space import (
    AlignedImage,
    Aligner,
    NativeProbabilities,
    check_image,
    native_label_map,
    native_probability_map,
    probabilities_to_native,
)
from deeprs.io import atomic_path
from deeprs.nets.padding import crop_to_shape
from deeprs.preprocess.crop import CropBox
from deeprs.progress import Progress

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictionFiles:
    image: Path
    label: Path
    probabilities: Path | None
    seconds: float


def image_suffix(path: Path) -> str | None:
    return next((s for s in IMAGE_SUFFIXES if path.name.endswith(s)), None)


def input_images(path: str | Path) -> list[Path]:
    """The image itself, or every NIfTI/MHA/NRRD file in a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        if image_suffix(path) is None:
            raise DataError(f"'{path}' is not a {'/'.join(IMAGE_SUFFIXES)} file")
        return [path]
    if not path.is_dir():
        raise DataError(f"'{path}' does not exist; give an image file or a folder of images")
    images = sorted(p for p in path.iterdir() if image_suffix(p) and not p.name.startswith("."))
    if not images:
        raise DataError(f"folder '{path}' holds no {'/'.join(IMAGE_SUFFIXES)} image")
    return images


def bundle_paths(bundles: list[Path], folds: list[int] | None) -> list[Path]:
    """``--bundle`` files, or with ``--folds`` the ``fold_<k>/bundle.pt`` of one method folder."""
    if folds is None:
        return list(bundles)
    if len(bundles) != 1 or not bundles[0].is_dir():
        raise DataError(
            "--folds needs --bundle to be one method folder, e.g. results/deeprs "
            "(holding fold_0/bundle.pt, fold_1/bundle.pt, ...)"
        )
    return [bundles[0] / f"fold_{k}" / BUNDLE_FILE for k in folds]


def check_ensemble(bundles: list[Bundle]) -> None:
    """Every bundle segments, and all share the label table and modality."""
    first = bundles[0]
    for bundle in bundles:
        if bundle.model.segmentation is None:
            raise DataError(
                f"bundle '{bundle.path}' (method '{bundle.method}') has no segmentation "
                "network; use the bundle of a method that segments (e.g. deeprs, unet3d)"
            )
        if bundle.label_values != first.label_values or bundle.model.labels != first.model.labels:
            raise DataError(
                f"bundles '{first.path}' and '{bundle.path}' have different label tables; "
                "ensemble only models of one study"
            )
        if bundle.plan["modality"] != first.plan["modality"]:
            raise DataError(
                f"bundles '{first.path}' and '{bundle.path}' were trained on different "
                "modalities; ensemble only models of one study"
            )


def plan_key(bundle: Bundle) -> str:
    """Bundles with equal keys align an image identically (same plan and reference images)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({k: v for k, v in bundle.plan.items() if k != "images"}).encode())
    for name in sorted(bundle.plan["images"]):
        digest.update(sitk.GetArrayViewFromImage(bundle.plan["images"][name]).tobytes())
    return digest.hexdigest()


def grid_probabilities(
    bundles: list[Bundle], aligned: AlignedImage, device: torch.device, cpu_bf16: bool
) -> np.ndarray:
    """Mean of the bundles' class probabilities ``(C, z, y, x)`` on the training grid."""
    total = None
    for bundle in bundles:
        network = bundle.model.segmentation
        assert network is not None
        image = volume_tensor(aligned.array, device, bundle.model.multiple)
        probabilities = segmentation_probabilities(network, image, cpu_bf16)
        cropped = crop_to_shape(probabilities, aligned.array.shape)[0].cpu().numpy()
        total = cropped if total is None else total + cropped
    assert total is not None
    return total / len(bundles)


def merge_native(parts: list[tuple[NativeProbabilities, int]]) -> NativeProbabilities:
    """Weighted mean of probabilities over the union of their boxes (background outside each)."""
    if len(parts) == 1:
        return parts[0][0]
    start = np.min([p.box.start for p, _ in parts], axis=0)
    stop = np.max([p.box.stop for p, _ in parts], axis=0)
    channels = parts[0][0].values.shape[0]
    union = np.zeros((channels, *(stop - start)[::-1]), dtype=np.float32)
    weights = sum(weight for _, weight in parts)
    for part, weight in parts:
        full = np.zeros_like(union)
        full[0] = 1.0
        (x0, y0, z0), (x1, y1, z1) = (
            np.asarray(part.box.start) - start,
            np.asarray(part.box.stop) - start,
        )
        full[:, z0:z1, y0:y1, x0:x1] = part.values
        union += full * (weight / weights)
    box = CropBox(tuple(int(v) for v in start), tuple(int(v) for v in stop - start))  # type: ignore[arg-type]
    return NativeProbabilities(box, union)


class Predictor:
    """Bundles grouped by plan, each group with its aligner (elastix is started once).

    With ``two_pass`` (the default) an image is segmented twice, the second time from the
    heart box of the first pass's label map (see the module docstring).
    """

    def __init__(
        self,
        bundles: list[Bundle],
        device: torch.device,
        cpu_bf16: bool,
        threads: int = 1,
        two_pass: bool = True,
    ) -> None:
        if not bundles:
            raise DataError("give at least one bundle with --bundle")
        check_ensemble(bundles)
        groups: dict[str, list[Bundle]] = {}
        for bundle in bundles:
            groups.setdefault(plan_key(bundle), []).append(bundle)
        self.groups = [(Aligner(group[0].plan, threads), group) for group in groups.values()]
        self.device, self.cpu_bf16, self.two_pass = device, cpu_bf16, two_pass
        first = bundles[0]
        by_class = sorted(first.model.labels, key=first.model.labels.__getitem__)
        self.label_values = [first.label_values[name] for name in by_class]
        self.modality = str(first.plan["modality"])

    def one_pass(
        self, path: Path, native: sitk.Image, heart_label: sitk.Image | None
    ) -> NativeProbabilities:
        """Ensembled probabilities on the native grid, each group aligned from the box of
        ``heart_label`` (or, without one, from the box carried from its reference)."""
        parts = []
        for aligner, bundles in self.groups:
            aligned = aligner.align_image(path, native, heart_label)
            on_grid = grid_probabilities(bundles, aligned, self.device, self.cpu_bf16)
            native_part = probabilities_to_native(
                on_grid, aligned.target.grid, aligned.native, aligned.affine
            )
            parts.append((native_part, len(bundles)))
        return merge_native(parts)

    def probabilities(self, path: Path) -> tuple[sitk.Image, NativeProbabilities]:
        """The native image and its ensembled class probabilities on its own grid."""
        native = check_image(path, self.modality)
        first = self.one_pass(path, native, None)
        if not self.two_pass:
            return native, first
        label = native_label_map(native, first, self.label_values)
        if not np.any(sitk.GetArrayViewFromImage(label)):
            LOG.warning(
                "%s: the first pass found no heart, so its box carried from the reference "
                "is kept (no second pass)",
                path,
            )
            return native, first
        return native, self.one_pass(path, native, label)

    def predict(
        self, path: Path, out_dir: Path, write_probabilities: bool = False
    ) -> PredictionFiles:
        started = time.perf_counter()
        native, probabilities = self.probabilities(path)
        suffix = image_suffix(path) or ".nii.gz"
        stem = path.name[: -len(suffix)]
        label_path = out_dir / f"{stem}{suffix}"
        with atomic_path(label_path) as temporary:
            label = native_label_map(native, probabilities, self.label_values)
            sitk.WriteImage(label, str(temporary), useCompression=True)
        probability_path = None
        if write_probabilities:
            probability_path = out_dir / f"{stem}_probabilities{suffix}"
            with atomic_path(probability_path) as temporary:
                image = native_probability_map(native, probabilities)
                sitk.WriteImage(image, str(temporary), useCompression=True)
        return PredictionFiles(path, label_path, probability_path, time.perf_counter() - started)


def predict_files(
    images: list[Path],
    predictor: Predictor,
    out_dir: Path,
    write_probabilities: bool = False,
) -> list[PredictionFiles]:
    """Predict every image into ``out_dir``, which must not be the folder of an input."""
    out_dir = Path(out_dir)
    for image in images:
        if image.parent.resolve() == out_dir.resolve():
            raise DataError(
                f"--out '{out_dir}' is the folder of the input '{image}'; choose another "
                "folder so that no input is overwritten"
            )
    # Every input is read once before the first alignment, so that a bad file late in a
    # long folder stops the run at once.
    for image in images:
        check_image(image, predictor.modality)
    written = []
    progress = Progress(len(images), "predict", unit="image")
    for image in images:
        files = predictor.predict(image, out_dir, write_probabilities)
        LOG.info("%s -> %s (%.1f s)", image, files.label, files.seconds)
        written.append(files)
        progress.update()
    progress.close()
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="an image (NIfTI/MHA/NRRD) or a folder of them")
    parser.add_argument(
        "--bundle",
        type=Path,
        nargs="+",
        required=True,
        help="bundle.pt file(s) to ensemble, or with --folds one method folder",
    )
    parser.add_argument(
        "--folds", type=int, nargs="+", help="ensemble <bundle>/fold_<k>/bundle.pt of these folds"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the label maps")
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <name>_probabilities: one component per class (background first)",
    )
    parser.add_argument(
        "--single-pass",
        action="store_true",
        help="segment once, from the heart box carried from the reference (faster; by "
        "default a second pass crops by the first pass's label, as evaluation crops)",
    )
    add_runtime_arguments(parser, "torch and elastix")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    device = select_device(args.device)
    images = input_images(args.input)
    bundles = [load_bundle(path, device) for path in bundle_paths(args.bundle, args.folds)]
    predictor = Predictor(bundles, device, args.cpu_bf16, args.threads, not args.single_pass)
    written = predict_files(images, predictor, args.out, args.probabilities)
    LOG.info(
        "wrote %d label map(s) to %s (%.1f s per image)",
        len(written),
        args.out,
        float(np.mean([files.seconds for files in written])),
    )
    return 0
