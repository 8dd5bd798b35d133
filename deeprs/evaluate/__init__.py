"""Evaluation of a trained method on a split: Dice, HD95 and folding (``deeprs evaluate``).

This module stays free of torch so that the report can read the column contract cheaply.
"""

METRICS_COLUMNS = (
    "method",
    "fold",
    "task",
    "sample",
    "structure",
    "dice",
    "hd95_mm",
    "nonpositive_jacobian_pct",
)
"""Columns of ``metrics.csv``, one row per test sample and structure (docs/architecture.md)."""
