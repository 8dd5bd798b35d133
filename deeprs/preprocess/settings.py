"""What preprocessing needs from the config (``data`` and ``preprocess`` sections)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deeprs.data.grouping import DEFAULT_SUBJECT_PATTERN


@dataclass(frozen=True)
class PreprocessSettings:
    """Cohort folder, label table and the preprocess settings, typed.

    ``target_shape_xyz`` is (in-plane, in-plane, through-plane) voxels over the reference's
    heart box (see :mod:`deeprs.preprocess.space`).
    """

    data_dir: Path
    layout: str
    modality: str
    labels: dict[str, int]
    reference: str = "auto"
    crop_margin_mm: float = 10.0
    target_shape_xyz: tuple[int, int, int] = (128, 128, 96)
    ct_window: tuple[float, float] = (-200.0, 800.0)
    mri_percentiles: tuple[float, float] = (1.0, 99.0)
    subject_pattern: str = DEFAULT_SUBJECT_PATTERN

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PreprocessSettings:
        data, settings = config["data"], config["preprocess"]
        return cls(
            data_dir=Path(data["dir"]),
            layout=data["layout"],
            modality=data["modality"],
            labels=dict(data["labels"]),
            reference=settings["reference"],
            crop_margin_mm=float(settings["crop_margin_mm"]),
            target_shape_xyz=tuple(int(v) for v in settings["target_shape"]),  # type: ignore[arg-type]
            ct_window=tuple(float(v) for v in settings["ct_window"]),  # type: ignore[arg-type]
            mri_percentiles=tuple(float(v) for v in settings["mri_percentiles"]),  # type: ignore[arg-type]
            subject_pattern=data["subject_pattern"],
        )
