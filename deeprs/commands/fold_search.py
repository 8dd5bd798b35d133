"""``deeprs fold-search``: choose the folding penalty's weight from the search on one split.

The search (Snakemake target ``fold_search``, ``budget.fold_weights``) trains every Table 1
method with a registration network on the budget split at each weight of the folding
penalty (``train.weights.fold``), with the rest of the preset's ``train`` section as it is,
and records R's folding on the validation pairs (never test images). This command applies
one rule to every method alike: the weight is the smallest searched one at which every
method's validation folding, averaged over the last third of training (the window of the
convergence criterion, :mod:`deeprs.convergence`), is at most ``max_folding_pct``. Where no
weight meets it, none is proposed and the methods above the limit at the largest weight are
named.

It writes ``fold_search.csv`` (one row per method and weight: folding and validation R-Dice,
final and over the last third) and ``fold_search.json`` (the choice and why), atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from deeprs import convergence
from deeprs.errors import DataError
from deeprs.io import write_text
from deeprs.jobs import search_run_folder

LOG = logging.getLogger(__name__)


def run_folder(results: Path, weight: float, method: str, split: str) -> Path:
    """Where the search's run of ``method`` at ``weight`` lives (the rule ``train_search``)."""
    return search_run_folder(results, "fold", weight, method, split)


@dataclass(frozen=True)
class FoldChoice:
    weight: float | None
    """The smallest searched weight that meets the limit for every method; None if none does."""
    max_folding_pct: float
    worst_folding: dict[str, float]
    """Per weight: the largest last-third mean folding (%) over the methods."""
    above_limit: list[str]
    """Methods above the limit at the chosen weight (none) or, if none was chosen, at the largest."""


def search_table(
    results: Path, weights: list[float], methods: list[str], split: str
) -> pd.DataFrame:
    """One row per (method, weight): R's validation folding and Dice, final and last third."""
    rows = []
    for weight in weights:
        for method in methods:
            path = run_folder(results, weight, method, split) / "validation.csv"
            frame = convergence.read_search_run(path, "fold search", "fold_search")
            if convergence.FOLDING not in frame.columns or frame[convergence.FOLDING].isna().all():
                raise DataError(
                    f"fold search run '{path}' has no R folding ({convergence.FOLDING}); "
                    "only methods with a registration network belong in the search"
                )
            last = frame[convergence.in_last_part(frame["iteration"].to_numpy())]
            rows.append(
                {
                    "method": method,
                    "weight": weight,
                    "folding_final": float(frame[convergence.FOLDING].iloc[-1]),
                    "folding_last_third": float(last[convergence.FOLDING].mean()),
                    "folding_max": float(frame[convergence.FOLDING].max()),
                    "r_dice_final": float(frame["r_dice"].iloc[-1]) * 100,
                    "r_dice_last_third": float(last["r_dice"].mean()) * 100,
                }
            )
    return pd.DataFrame(rows)


def choose(table: pd.DataFrame, max_folding_pct: float) -> FoldChoice:
    """The smallest weight at which no method's last-third folding exceeds the limit."""
    worst = table.groupby("weight")["folding_last_third"].max().sort_index()
    meeting = worst[worst <= max_folding_pct]
    weight = float(meeting.index[0]) if len(meeting) else None
    at = table[table["weight"] == (weight if weight is not None else worst.index[-1])]
    return FoldChoice(
        weight=weight,
        max_folding_pct=max_folding_pct,
        worst_folding={f"{w:g}": round(float(v), 3) for w, v in worst.items()},
        above_limit=sorted(at.loc[at["folding_last_third"] > max_folding_pct, "method"]),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, required=True, help="the study's results folder")
    parser.add_argument("--weights", type=float, nargs="*", required=True)
    parser.add_argument("--methods", nargs="+", required=True, help="the searched methods")
    parser.add_argument("--split", default="fold_0")
    parser.add_argument(
        "--max-folding", type=float, default=1.0, help="largest last-third folding (%%) allowed"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for fold_search.*")


def run(args: argparse.Namespace) -> int:
    if not args.weights:
        raise DataError(
            "config key 'budget.fold_weights' is empty: list the weights of the folding "
            "penalty to search, e.g. [1, 10, 100, 1000]"
        )
    table = search_table(args.results, args.weights, args.methods, args.split)
    choice = choose(table, args.max_folding)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "fold_search.csv", table.to_csv(index=False, float_format="%.4g"))
    write_text(args.out / "fold_search.json", json.dumps(asdict(choice), indent=2) + "\n")
    if choice.weight is None:
        LOG.warning(
            "fold search: no weight keeps every method at or below %g %% folding (worst per "
            "weight: %s); above it at the largest: %s; search larger weights",
            choice.max_folding_pct,
            choice.worst_folding,
            ", ".join(choice.above_limit),
        )
    else:
        LOG.info(
            "fold search: weight %g (worst last-third folding per weight: %s)",
            choice.weight,
            choice.worst_folding,
        )
    return 0
