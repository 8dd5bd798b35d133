"""``deeprs budget``: choose a preset's learning rate and iterations from the budget search.

The search (Snakemake target ``budget``, config section ``budget``) trains every Table 1
method that trains on one split, at each learning rate (one rate for R, S and D), and
records the validation Dice (never test images). This command reads those
``validation.csv`` files and applies one rule to every method alike:

- a run's score is the mean of its final validation Dice of S and of R (whichever it has);
- the learning rate is the one with the best mean score over the methods;
- the iterations are the first measured iteration from which on every method, at that rate,
  meets the convergence criterion (:mod:`deeprs.convergence`) on its curve up to there; a
  method that does not meet it at the search's end is named, and the search's length is
  proposed.

It writes ``budget.csv`` (one row per method and rate), ``budget.json`` (the choice and
why) and ``budget.png`` (the validation curves), atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deeprs import convergence
from deeprs.errors import DataError
from deeprs.io import write_text
from deeprs.jobs import search_run_folder

LOG = logging.getLogger(__name__)


def run_folder(results: Path, lr: float, method: str, split: str) -> Path:
    """Where the search's run of ``method`` at ``lr`` lives (the rule ``train_search``)."""
    return search_run_folder(results, "lr", lr, method, split)


def first_converged(frame: pd.DataFrame) -> int | None:
    """The first measured iteration from which on the run stays converged: the curve up to
    it, and up to every later measurement, meets the criterion. A plateau before learning
    starts (Adv-Reg's registration stays at the identity for hundreds of iterations) does not
    count once the curve moves again."""
    first = None
    for end in reversed(frame["iteration"].tolist()):
        results = convergence.assess(frame[frame["iteration"] <= end])
        if not (results and all(result.converged for result in results)):
            break
        first = int(end)
    return first


@dataclass(frozen=True)
class BudgetChoice:
    lr: float
    iterations: int
    mean_scores: dict[str, float]
    """Mean final validation Dice (%) over the methods, per learning rate."""
    unconverged: list[str]
    """Methods that never met the criterion at the chosen rate within the search."""


def search_table(results: Path, lrs: list[float], methods: list[str], split: str) -> pd.DataFrame:
    """One row per (method, lr): final Dice, change over the last third, first converged."""
    rows = []
    for lr in lrs:
        for method in methods:
            path = run_folder(results, lr, method, split) / "validation.csv"
            frame = convergence.read_search_run(path, "budget search", "budget")
            assessed = {result.signal: result for result in convergence.assess(frame)}
            if not assessed:
                raise DataError(f"budget search run '{path}' has no validation Dice")
            row: dict[str, object] = {"method": method, "lr": lr}
            for signal, result in assessed.items():
                row[f"{signal}_final"] = result.final * 100
                row[f"{signal}_change"] = result.change
                row[f"{signal}_change_se"] = result.change_se
            row["score"] = float(np.mean([result.final * 100 for result in assessed.values()]))
            row["first_converged"] = first_converged(frame)
            row["searched"] = int(frame["iteration"].max())
            rows.append(row)
    return pd.DataFrame(rows)


def choose(table: pd.DataFrame) -> BudgetChoice:
    """The rate with the best mean score; the iterations by which every method converged."""
    means = table.groupby("lr")["score"].mean()
    lr = float(means.idxmax())
    chosen = table[table["lr"] == lr]
    unconverged = sorted(chosen.loc[chosen["first_converged"].isna(), "method"])
    iterations = int(
        chosen["searched"].max() if unconverged else chosen["first_converged"].astype(float).max()
    )
    return BudgetChoice(
        lr=lr,
        iterations=iterations,
        mean_scores={f"{rate:g}": round(float(score), 2) for rate, score in means.items()},
        unconverged=unconverged,
    )


def plot_search(results: Path, lrs: list[float], methods: list[str], split: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deeprs.palette import method_colour
    from deeprs.report.figures import save_figure

    signals = list(convergence.SIGNALS)
    figure, axes = plt.subplots(
        len(signals), len(lrs), figsize=(5 * len(lrs), 3.6 * len(signals)), squeeze=False
    )
    for column, lr in enumerate(lrs):
        for row, signal in enumerate(signals):
            axis = axes[row, column]
            for method in methods:
                frame = pd.read_csv(run_folder(results, lr, method, split) / "validation.csv")
                if frame[signal].notna().any():
                    axis.plot(
                        frame["iteration"],
                        frame[signal] * 100,
                        marker=".",
                        color=method_colour(method, methods),
                        label=method,
                    )
            axis.set_title(f"lr {lr:g}: validation {convergence.SIGNALS[signal]} Dice")
            axis.set_xlabel("iteration")
            axis.set_ylabel("Dice (%)")
            axis.grid(alpha=0.3)
    for row in range(len(signals)):  # each signal has its own methods: a legend per row
        axes[row, 0].legend(fontsize=7, frameon=False)
    figure.tight_layout()
    path = save_figure(figure, out)
    plt.close(figure)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, required=True, help="the study's results folder")
    parser.add_argument("--lrs", type=float, nargs="+", required=True)
    parser.add_argument("--methods", nargs="+", required=True, help="the searched methods")
    parser.add_argument("--split", default="fold_0")
    parser.add_argument("--out", type=Path, required=True, help="folder for budget.{csv,json,png}")


def run(args: argparse.Namespace) -> int:
    table = search_table(args.results, args.lrs, args.methods, args.split)
    choice = choose(table)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "budget.csv", table.to_csv(index=False, float_format="%.4g"))
    write_text(args.out / "budget.json", json.dumps(asdict(choice), indent=2) + "\n")
    plot_search(args.results, args.lrs, args.methods, args.split, args.out / "budget.png")
    LOG.info(
        "budget: lr %g (mean final validation Dice per rate: %s), %d iterations%s",
        choice.lr,
        choice.mean_scores,
        choice.iterations,
        f"; not converged within the search: {', '.join(choice.unconverged)}"
        if choice.unconverged
        else "",
    )
    return 0
