"""Read access to the preprocessed cohort and to the split files, for training and evaluation.

The preprocessing step writes ``manifest.json`` with training-ready ``.npy`` arrays beside
it, and ``deeprs split`` writes one JSON file per fold or label-amount split (formats in
``docs/architecture.md``). Everything downstream reads them through this module, so a
missing array, a malformed file or a split that names an unknown case is reported once,
the same way, with the file that is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deeprs.errors import DataError


@dataclass(frozen=True)
class CaseRecord:
    """One preprocessed case: ``label_path`` is None when unlabelled.

    ``source_image`` and ``source_label`` are the case's files before preprocessing, as
    found (relative to the working directory when ``data.dir`` is), and ``transform_path``
    the affine that maps grid points to the source image's points; all three are None in
    manifests written before they were recorded.
    """

    id: str
    subject: str
    labelled: bool
    image_path: Path
    label_path: Path | None
    source_image: Path | None = None
    source_label: Path | None = None
    transform_path: Path | None = None


@dataclass
class Manifest:
    """The preprocessed cohort: structure names, voxel spacing and the cases.

    ``label_values`` maps structure names to their values in the source label files and
    ``target_space`` is the training grid's geometry (:class:`deeprs.preprocess.space.TargetSpace`
    as JSON); None in manifests written before they were recorded.
    """

    path: Path
    labels: dict[str, int]
    spacing_xyz: tuple[float, float, float]
    cases: dict[str, CaseRecord]
    label_values: dict[str, int] | None = None
    target_space: dict[str, Any] | None = None
    _arrays: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in the axis order of the arrays, which is what metrics in mm need."""
        x, y, z = self.spacing_xyz
        return (z, y, x)

    @property
    def labelled_ids(self) -> list[str]:
        return [case.id for case in self.cases.values() if case.labelled]

    @property
    def unlabelled_ids(self) -> list[str]:
        return [case.id for case in self.cases.values() if not case.labelled]

    def record(self, case_id: str) -> CaseRecord:
        try:
            return self.cases[case_id]
        except KeyError:
            raise DataError(
                f"{self.path}: case '{case_id}' is not in the manifest; rerun the split step "
                "so that the split files match the preprocessed cohort"
            ) from None

    def image(self, case_id: str) -> np.ndarray:
        """The float32 ``(z, y, x)`` image in [0, 1], memory-mapped and cached."""
        return self._load(case_id, "image", self.record(case_id).image_path, np.float32)

    def label(self, case_id: str) -> np.ndarray:
        """The uint8 ``(z, y, x)`` class map (0 = background); the case must be labelled."""
        record = self.record(case_id)
        if not record.labelled or record.label_path is None:
            raise DataError(
                f"{self.path}: case '{case_id}' has no label but is used where a label is "
                "needed; use only labelled cases as moving or test cases"
            )
        return self._load(case_id, "label", record.label_path, np.uint8)

    def _load(self, case_id: str, kind: str, path: Path, dtype: type) -> np.ndarray:
        key = (case_id, kind)
        if key not in self._arrays:
            try:
                array = np.load(path, mmap_mode="r")
            except FileNotFoundError:
                raise DataError(
                    f"{path}: the {kind} of case '{case_id}' is missing; rerun the "
                    "preprocessing step"
                ) from None
            except ValueError as error:
                raise DataError(
                    f"{path}: the {kind} of case '{case_id}' is not a readable .npy array "
                    f"({error}); rerun the preprocessing step"
                ) from None
            if array.dtype != dtype or array.ndim != 3:
                raise DataError(
                    f"{path}: the {kind} of case '{case_id}' is {array.dtype} with "
                    f"{array.ndim} axes but must be a 3-axis {np.dtype(dtype)} array; "
                    "rerun the preprocessing step"
                )
            self._arrays[key] = array
        return self._arrays[key]


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{what} '{path}' does not exist; run its step first") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{what} '{path}' is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{what} '{path}' must hold a JSON object")
    return data


def _require(data: dict[str, Any], key: str, kind: type, path: Path, what: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise DataError(f"{what} '{path}': key '{key}' is missing or not a {kind.__name__}")
    return value


def _case_record(entry: Any, folder: Path, path: Path) -> CaseRecord:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        raise DataError(f"manifest '{path}': every entry of 'cases' needs a string 'id'")
    case_id = entry["id"]
    image = entry.get("image")
    if not isinstance(image, str):
        raise DataError(f"manifest '{path}': case '{case_id}' has no 'image' path")
    labelled = bool(entry.get("labelled", False))
    label = entry.get("label")
    if labelled and not isinstance(label, str):
        raise DataError(
            f"manifest '{path}': case '{case_id}' is marked labelled but has no 'label' path"
        )
    return CaseRecord(
        id=case_id,
        subject=str(entry.get("subject") or case_id),
        labelled=labelled,
        image_path=folder / image,
        label_path=folder / label if labelled else None,
        source_image=_optional_path(entry, "source_image", path),
        source_label=_optional_path(entry, "source_label", path),
        transform_path=_optional_path(entry, "transform", path, folder),
    )


def _optional_path(
    entry: dict[str, Any], key: str, path: Path, folder: Path | None = None
) -> Path | None:
    """``entry[key]`` as a path (under ``folder`` when given), None when absent or null."""
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"manifest '{path}': case '{entry['id']}' has a non-string '{key}'")
    return folder / value if folder is not None else Path(value)


def load_manifest(path: str | Path) -> Manifest:
    """Read ``manifest.json``; array paths in it are relative to its folder."""
    path = Path(path)
    what = "manifest"
    data = _read_json_object(path, what)
    labels = _require(data, "labels", dict, path, what)
    spacing = _require(data, "spacing_xyz", list, path, what)
    entries = _require(data, "cases", list, path, what)
    if len(spacing) != 3 or not all(isinstance(v, int | float) and v > 0 for v in spacing):
        raise DataError(f"manifest '{path}': 'spacing_xyz' must be three positive numbers")
    if not all(isinstance(v, int) and v > 0 for v in labels.values()):
        raise DataError(f"manifest '{path}': 'labels' must map names to class indices >= 1")
    cases: dict[str, CaseRecord] = {}
    for entry in entries:
        record = _case_record(entry, path.parent, path)
        if record.id in cases:
            raise DataError(f"manifest '{path}': case '{record.id}' is listed twice")
        cases[record.id] = record
    label_values = data.get("label_values")
    if label_values is not None and (
        not isinstance(label_values, dict)
        or list(label_values) != list(labels)
        or not all(isinstance(v, int) and v > 0 for v in label_values.values())
    ):
        raise DataError(
            f"manifest '{path}': 'label_values' must map the names of 'labels', in their "
            "order, to positive label values; rerun the preprocessing step"
        )
    target_space = data.get("target_space")
    return Manifest(
        path=path,
        labels=dict(labels),
        spacing_xyz=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        cases=cases,
        label_values=dict(label_values) if label_values is not None else None,
        target_space=dict(target_space) if isinstance(target_space, dict) else None,
    )


@dataclass(frozen=True)
class Split:
    """One fold or label-amount split: which cases train (moving, fixed), which test, and
    which only measure training's progress (``validation``, the same for every split)."""

    name: str
    seed: int
    train_moving: list[str]
    train_fixed: list[str]
    test: list[str]
    validation: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "train_moving": list(self.train_moving),
            "train_fixed": list(self.train_fixed),
            "test": list(self.test),
            "validation": list(self.validation),
        }

    def check_against(self, manifest: Manifest, source: str | Path) -> None:
        """Raise DataError when the split names a case the manifest lacks or needs a missing label."""
        for role in ("train_moving", "train_fixed", "test", "validation"):
            for case_id in getattr(self, role):
                if case_id not in manifest.cases:
                    raise DataError(
                        f"split '{source}': {role} case '{case_id}' is not in the manifest "
                        f"'{manifest.path}'; rerun the split step"
                    )
        for role in ("train_moving", "test", "validation"):
            for case_id in getattr(self, role):
                if not manifest.cases[case_id].labelled:
                    raise DataError(
                        f"split '{source}': {role} case '{case_id}' has no label but "
                        f"{role} cases need one; rerun the split step"
                    )


def load_split(path: str | Path, manifest: Manifest | None = None) -> Split:
    """Read a split file; with ``manifest``, also check every case in it exists and is usable."""
    path = Path(path)
    what = "split file"
    data = _read_json_object(path, what)
    name = _require(data, "name", str, path, what)
    seed = _require(data, "seed", int, path, what)
    lists = {}
    for role in ("train_moving", "train_fixed", "test"):
        values = _require(data, role, list, path, what)
        if not all(isinstance(v, str) for v in values):
            raise DataError(f"{what} '{path}': key '{role}' must be a list of case ids")
        lists[role] = list(values)
    validation = data.get("validation", [])
    if not isinstance(validation, list) or not all(isinstance(v, str) for v in validation):
        raise DataError(f"{what} '{path}': key 'validation' must be a list of case ids")
    split = Split(name=name, seed=seed, validation=list(validation), **lists)
    if manifest is not None:
        split.check_against(manifest, path)
    return split
