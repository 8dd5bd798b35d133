"""The model bundle: one file that is all ``deeprs predict`` and ``deeprs register`` need.

Like nnU-Net's plans beside its checkpoints, a bundle holds the networks (kind,
constructor arguments, weights), the preprocessing plan of the cohort they were trained on
(:mod:`deeprs.preprocess.plan`: crop rule, reference images and target grid, intensity
scaling, label values), the label table, the method, the split and the versions that wrote
it. ``deeprs export`` builds it from a training step's ``model.pt`` and the preprocessing
step's ``plan.json``. A bundle of another format version is refused with one line.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

import deeprs
from deeprs.errors import DataError
from deeprs.inference.model import TrainedModel, model_from_payload, read_torch_file
from deeprs.inference.networks import use_training_layout
from deeprs.io import atomic_path
from deeprs.nets.padding import padded_shape
from deeprs.preprocess.plan import PLAN_IMAGES, check_plan_version, read_plan

BUNDLE_FORMAT = "deeprs-bundle"
BUNDLE_VERSION = 1
"""Raised whenever the layout of a bundle changes; readers refuse other versions."""
BUNDLE_FILE = "bundle.pt"


@dataclass
class Bundle:
    """A loaded bundle: the networks, the plan (images as SimpleITK images) and its origin."""

    path: Path
    model: TrainedModel
    plan: dict[str, Any]
    split: str
    versions: dict[str, str]

    @property
    def method(self) -> str:
        return self.model.method

    @property
    def label_values(self) -> dict[str, int]:
        """Structure name -> the value it has in the cohort's label files (``data.labels``)."""
        return dict(self.plan["labels"])


def versions() -> dict[str, str]:
    return {
        "deeprs": deeprs.__version__,
        "torch": str(torch.__version__),
        "simpleitk": sitk.Version.VersionString(),
        "python": platform.python_version(),
    }


def _image_record(image: sitk.Image) -> dict[str, Any]:
    return {
        "voxels": torch.from_numpy(np.ascontiguousarray(sitk.GetArrayFromImage(image))),
        "spacing_xyz": [float(v) for v in image.GetSpacing()],
        "origin_xyz": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
    }


def _image_from_record(record: dict[str, Any]) -> sitk.Image:
    image = sitk.GetImageFromArray(record["voxels"].numpy())
    image.SetSpacing(record["spacing_xyz"])
    image.SetOrigin(record["origin_xyz"])
    image.SetDirection(record["direction"])
    return image


def bundle_payload(
    model_payload: dict[str, Any], plan: dict[str, Any], split: str, source: str | Path
) -> dict[str, Any]:
    """The bundle of a ``model.pt`` payload and a plan, after checking they belong together."""
    labels = model_payload.get("labels")
    if not isinstance(labels, dict) or list(labels) != list(plan["labels"]):
        raise DataError(
            f"model file '{source}' was trained with structures {labels} but the plan has "
            f"{list(plan['labels'])}; export with the plan of the cohort it was trained on"
        )
    models = {
        key: record
        for key, record in (model_payload.get("models") or {}).items()
        if key != "discriminator"
    }
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "versions": versions(),
        "method": model_payload["method"],
        "split": split,
        "iteration": int(model_payload.get("iteration", 0)),
        "labels": dict(labels),
        "models": models,
        "plan": {key: value for key, value in plan.items() if key != "images"},
        "plan_images": {name: _image_record(plan["images"][name]) for name in PLAN_IMAGES},
    }


def export_bundle(
    model_path: str | Path, plan_path: str | Path, out: str | Path, split: str = ""
) -> Path:
    """Write the bundle of a training step's ``model.pt`` and the cohort's ``plan.json``."""
    payload = read_torch_file(model_path, "model file", "delete it and rerun the training step")
    if payload.get("format") == BUNDLE_FORMAT:
        raise DataError(f"'{model_path}' is already a bundle; pass the training step's model.pt")
    bundle = bundle_payload(payload, read_plan(plan_path), split, model_path)
    with atomic_path(out) as temporary, open(temporary, "wb") as handle:
        torch.save(bundle, handle)
    return Path(out)


def load_bundle(path: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """Read a bundle; a model file, another format version or a damaged file is one error line."""
    path = Path(path)
    payload = read_torch_file(path, "bundle", f"rebuild it with `deeprs export --out {path}`")
    if payload.get("format") != BUNDLE_FORMAT:
        raise DataError(
            f"'{path}' is not a deeprs bundle (a training step's model.pt?); build one with "
            "`deeprs export --model model.pt --plan plan.json --out bundle.pt`"
        )
    version = payload.get("format_version")
    if version != BUNDLE_VERSION:
        writer = (payload.get("versions") or {}).get("deeprs", "an unknown version")
        raise DataError(
            f"bundle '{path}' has format version {version} (written by deeprs {writer}) but "
            f"deeprs {deeprs.__version__} reads version {BUNDLE_VERSION}; export it again "
            "with this version or install the deeprs that wrote it"
        )
    check_plan_version(payload.get("plan"), path)
    images = {name: _image_from_record(r) for name, r in payload["plan_images"].items()}
    model = model_from_payload(payload, torch.device(device), path)
    grid_zyx = tuple(reversed(payload["plan"]["target_shape_xyz"]))
    use_training_layout(model.networks.values(), padded_shape(grid_zyx, model.multiple))
    return Bundle(
        path=path,
        model=model,
        plan={**payload["plan"], "images": images},
        split=str(payload.get("split", "")),
        versions=dict(payload.get("versions") or {}),
    )
