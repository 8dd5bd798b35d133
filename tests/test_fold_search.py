"""The folding penalty's search (deeprs fold-search): one rule for every method, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deeprs.cli import main
from deeprs.commands.fold_search import choose, run_folder, search_table
from deeprs.errors import DataError

ITERATIONS = np.arange(0, 601, 25)


def write_run(results: Path, weight: float, method: str, folding: np.ndarray) -> None:
    folder = run_folder(results, weight, method, "fold_0")
    folder.mkdir(parents=True)
    frame = pd.DataFrame(
        {
            "iteration": ITERATIONS,
            "s_dice": np.nan,
            "r_dice": np.linspace(0.30, 0.36, ITERATIONS.size),
            "r_folding_pct": folding,
            "source": "validation",
        }
    )
    frame.to_csv(folder / "validation.csv", index=False)


def folding_curve(before: float, last_third: float) -> np.ndarray:
    """``before`` until iteration 375, ``last_third`` from 400 (the last third) on."""
    return np.where(ITERATIONS >= 400, last_third, before)


def test_the_smallest_weight_that_keeps_every_method_below_the_limit(tmp_path: Path) -> None:
    # At 10 advreg's last third is 3 %; at 100 both are below 1 % (a burst before the last
    # third does not count); 1000 would also pass but is larger.
    write_run(tmp_path, 10, "voxelmorph2", folding_curve(5.0, 0.5))
    write_run(tmp_path, 10, "advreg", folding_curve(20.0, 3.0))
    write_run(tmp_path, 100, "voxelmorph2", folding_curve(0.2, 0.1))
    write_run(tmp_path, 100, "advreg", folding_curve(12.0, 0.8))
    write_run(tmp_path, 1000, "voxelmorph2", folding_curve(0.0, 0.0))
    write_run(tmp_path, 1000, "advreg", folding_curve(1.0, 0.2))
    table = search_table(tmp_path, [10, 100, 1000], ["voxelmorph2", "advreg"], "fold_0")
    advreg = table[(table["method"] == "advreg") & (table["weight"] == 100)].iloc[0]
    assert advreg["folding_last_third"] == pytest.approx(0.8)
    assert advreg["folding_max"] == pytest.approx(12.0)
    assert advreg["r_dice_final"] == pytest.approx(36.0)
    choice = choose(table, 1.0)
    assert choice.weight == 100 and choice.above_limit == []
    assert choice.worst_folding == {"10": 3.0, "100": 0.8, "1000": 0.2}
    assert choose(table, 0.1).weight is None
    assert choose(table, 0.1).above_limit == ["advreg"]


def test_cli_writes_the_choice_and_refuses_an_empty_search(tmp_path: Path) -> None:
    write_run(tmp_path, 1, "advreg", folding_curve(20.0, 20.0))
    arguments = ["fold-search", "--results", str(tmp_path), "--methods", "advreg"]
    assert main([*arguments, "--weights", "1", "--out", str(tmp_path / "out")]) == 0
    choice = json.loads((tmp_path / "out" / "fold_search.json").read_text())
    assert choice["weight"] is None and choice["above_limit"] == ["advreg"]
    assert len(pd.read_csv(tmp_path / "out" / "fold_search.csv")) == 1
    assert main([*arguments, "--weights", "--out", str(tmp_path / "empty")]) != 0
    assert not (tmp_path / "empty").exists()


def test_missing_or_segmentation_only_runs_say_which(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fold_10/advreg/fold_0/validation.csv' is missing"):
        search_table(tmp_path, [10], ["advreg"], "fold_0")
    write_run(tmp_path, 10, "unet3d", np.full(ITERATIONS.size, np.nan))
    with pytest.raises(DataError, match="only methods with a registration network"):
        search_table(tmp_path, [10], ["unet3d"], "fold_0")
