"""The preprocessing QC page of the report: ``qc.csv`` as a readable table, and the mosaic.

``deeprs preprocess`` writes one QC row per case (crop box, affine, registration metric,
Dice before and after the affine) and a mosaic of every case; this page puts both in
front of a reader, the mosaic embedded so that the page stands alone.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from deeprs.errors import DataError
from deeprs.io import write_text
from deeprs.report.tables import TABLE_STYLE

SHOWN_COLUMNS: dict[str, str] = {
    "case": "Case",
    "labelled": "Labelled",
    "box_source": "Crop box from",
    "box_size_xyz": "Box size (x y z, voxels)",
    "affine_determinant": "det(affine)",
    "elastix_final_metric": "Affine metric",
    "dice_pairwise_crop": "Dice to others, cropped",
    "dice_pairwise_affine": "Dice to others, affine",
    "dice_reference_crop": "Dice to reference, cropped",
    "dice_reference_affine": "Dice to reference, affine",
    "seconds": "Seconds",
}
"""qc.csv column -> heading; the page shows these when present, qc.csv has them all."""

QC_STYLE = "img{max-width:100%;border:1px solid #ddd} th,td{white-space:normal;max-width:190px}"
"""Wrap the long text cells, so that the table fits the report's frame."""


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"QC file '{path}' is missing; rerun `deeprs preprocess`")
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(
            f"QC file '{path}' cannot be read ({error}); rerun `deeprs preprocess`"
        ) from None


def qc_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The shown columns, renamed; numbers to 3 decimals, NaN as '-'."""
    shown = frame[[column for column in SHOWN_COLUMNS if column in frame.columns]].copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    return shown.rename(columns=SHOWN_COLUMNS)


def _mean_line(frame: pd.DataFrame, before: str, after: str, what: str) -> str:
    if before not in frame or after not in frame:
        return ""
    pairs = frame[[before, after]].dropna()
    if pairs.empty:
        return ""
    return (
        f"<li>Mean Dice {what}: {pairs[before].mean():.3f} after cropping, "
        f"{pairs[after].mean():.3f} after the affine ({len(pairs)} labelled cases).</li>"
    )


def write_qc_page(preprocessed: Path, out_path: Path) -> Path:
    """``qc.html`` from ``{preprocessed}/qc.csv`` and ``{preprocessed}/mosaic.png``."""
    preprocessed = Path(preprocessed)
    frame = _read(preprocessed / "qc.csv")
    mosaic = preprocessed / "mosaic.png"
    if not mosaic.is_file():
        raise DataError(f"QC mosaic '{mosaic}' is missing; rerun `deeprs preprocess`")
    encoded = base64.b64encode(mosaic.read_bytes()).decode("ascii")
    labelled = int(frame["labelled"].astype(str).str.lower().eq("true").sum())
    summary = [
        f"<li>{len(frame)} cases, {labelled} labelled.</li>",
        _mean_line(frame, "dice_pairwise_crop", "dice_pairwise_affine", "to the other cases"),
        _mean_line(frame, "dice_reference_crop", "dice_reference_affine", "to the reference"),
    ]
    table = qc_table(frame).to_html(index=False, border=0, escape=True)
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Preprocessing QC</title>'
        f"<style>{TABLE_STYLE} {QC_STYLE}</style></head><body>\n"
        '<h1 style="font-size:20px">Preprocessing quality control</h1>\n'
        f"<ul>{''.join(summary)}</ul>\n"
        f"<h2>Every case after preprocessing ({html.escape(mosaic.name)})</h2>\n"
        f'<img alt="mosaic of every preprocessed case" src="data:image/png;base64,{encoded}">\n'
        f"<h2>Per case ({html.escape(str(preprocessed / 'qc.csv'))}, selected columns)</h2>\n"
        f"{table}\n</body></html>\n"
    )
    write_text(out_path, page)
    return Path(out_path)
