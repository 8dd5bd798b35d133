"""The convergence criterion (deeprs.convergence) and the budget search's choice (deeprs budget)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deeprs import convergence
from deeprs.cli import main
from deeprs.commands.budget import choose, first_converged, run_folder, search_table
from deeprs.errors import DataError
from deeprs.jobs import SEARCH_PATTERN, parse_search_name, search_name, search_run_folder

ITERATIONS = np.arange(0, 601, 25)


def curve(final: float, rise_until: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Dice rising linearly from 0.1 to ``final`` by ``rise_until``, then flat, plus noise."""
    rising = 0.1 + (final - 0.1) * np.minimum(ITERATIONS / rise_until, 1.0)
    return rising + np.random.default_rng(seed).normal(0, noise, ITERATIONS.size)


def test_a_plateau_converges_and_a_rise_does_not() -> None:
    flat = curve(0.8, 200, noise=0.003)
    assert abs(convergence.change_over_last_third(ITERATIONS, flat)) < 1.0
    # Still rising 0.7 points per 100 iterations at the end: 1.4 points over the last third.
    rising = 0.5 + 0.007 * ITERATIONS / 100
    change = convergence.change_over_last_third(ITERATIONS, rising)
    assert change == pytest.approx(0.7 * 2, rel=1e-6)
    frame = pd.DataFrame({"iteration": ITERATIONS, "s_dice": flat, "r_dice": rising})
    verdicts = {result.signal: result.converged for result in convergence.assess(frame)}
    assert verdicts == {"s_dice": True, "r_dice": False}


def test_one_noisy_measurement_does_not_decide() -> None:
    values = curve(0.8, 200)
    values[-1] += 0.03  # one outlier of 3 points at the very end
    change = convergence.change_over_last_third(ITERATIONS, values)
    assert abs(change) < 3.0 and change > 0


def test_too_few_measurements_are_undecided_and_absent_networks_skipped() -> None:
    frame = pd.DataFrame({"iteration": [0, 100, 200], "s_dice": [0.1, 0.5, 0.6]})
    frame["r_dice"] = np.nan
    (result,) = convergence.assess(frame)
    assert result.signal == "s_dice" and result.converged is None
    assert result.final == pytest.approx(0.6)


def test_unreadable_validation_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "validation.csv"
    path.write_text("iteration,s_dice\n0,0.1\n")
    with pytest.raises(DataError, match="lacks columns \\['r_dice'\\]; rerun its training"):
        convergence.read_validation(path)


def write_search(results: Path, runs: dict[tuple[float, str], pd.DataFrame]) -> None:
    for (lr, method), frame in runs.items():
        folder = run_folder(results, lr, method, "fold_0")
        folder.mkdir(parents=True)
        frame.to_csv(folder / "validation.csv", index=False)


def frame_of(s_dice: np.ndarray | None, r_dice: np.ndarray | None) -> pd.DataFrame:
    empty = np.full(ITERATIONS.size, np.nan)
    return pd.DataFrame(
        {
            "iteration": ITERATIONS,
            "s_dice": empty if s_dice is None else s_dice,
            "r_dice": empty if r_dice is None else r_dice,
            "source": "validation",
        }
    )


def test_budget_picks_the_best_rate_for_all_and_the_latest_convergence(tmp_path: Path) -> None:
    runs = {
        (0.001, "unet3d"): frame_of(curve(0.70, 500), None),
        (0.001, "deeprs"): frame_of(curve(0.72, 500), curve(0.60, 500)),
        (0.003, "unet3d"): frame_of(curve(0.80, 150), None),
        (0.003, "deeprs"): frame_of(curve(0.78, 300), curve(0.66, 100)),
    }
    write_search(tmp_path, runs)
    table = search_table(tmp_path, [0.001, 0.003], ["unet3d", "deeprs"], "fold_0")
    choice = choose(table)
    assert choice.lr == 0.003
    assert choice.mean_scores == {"0.001": pytest.approx(68.0), "0.003": pytest.approx(76.0)}
    # unet3d flat from 150 and deeprs from 300; the criterion needs a flat last third.
    unet = first_converged(runs[(0.003, "unet3d")])
    deeprs = first_converged(runs[(0.003, "deeprs")])
    assert unet is not None and deeprs is not None and unet < deeprs
    assert 300 <= deeprs <= 475
    assert choice.iterations == deeprs and choice.unconverged == []


def test_budget_names_methods_that_never_converged(tmp_path: Path) -> None:
    rising = 0.2 + 0.1 * ITERATIONS / 100  # still climbing 10 points per 100 iterations
    write_search(tmp_path, {(0.001, "unet3d"): frame_of(np.clip(rising, 0, 0.95), None)})
    assert (
        main(
            [
                "budget",
                "--results",
                str(tmp_path),
                "--lrs",
                "0.001",
                "--methods",
                "unet3d",
                "--out",
                str(tmp_path / "budget"),
            ]
        )
        == 0
    )
    choice = json.loads((tmp_path / "budget" / "budget.json").read_text())
    assert choice["unconverged"] == ["unet3d"] and choice["iterations"] == 600
    assert (tmp_path / "budget" / "budget.png").stat().st_size > 0
    table = pd.read_csv(tmp_path / "budget" / "budget.csv")
    assert table["first_converged"].isna().all()


def test_budget_with_a_missing_run_says_which(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="lr_0.001/unet3d/fold_0/validation.csv' is missing"):
        search_table(tmp_path, [0.001], ["unet3d"], "fold_0")


def test_an_early_plateau_before_learning_does_not_count() -> None:
    """Flat at the identity until 400, then rising: not converged at the search's end."""
    late = np.where(ITERATIONS < 400, 0.63, 0.63 + 0.05 * (ITERATIONS - 400) / 200)
    assert first_converged(frame_of(None, late)) is None
    # Flat at the identity, rising, then flat again: converged from the second plateau on.
    settles = np.clip(0.63 + 0.1 * (ITERATIONS - 200) / 100, 0.63, 0.73)
    assert 300 < first_converged(frame_of(None, settles)) <= 450


def test_the_standard_error_is_scipys_slope_error_over_the_last_third() -> None:
    from scipy.stats import linregress

    values = curve(0.8, 200, noise=0.01, seed=3)
    change, change_se = convergence.trend_over_last_third(ITERATIONS, values)
    last = ITERATIONS >= 400
    reference = linregress(ITERATIONS[last], values[last])
    assert change == pytest.approx(reference.slope * 200 * 100)
    assert change_se == pytest.approx(reference.stderr * 200 * 100)
    exact = 0.5 + 0.001 * ITERATIONS / 100
    assert convergence.trend_over_last_third(ITERATIONS, exact)[1] == pytest.approx(0, abs=1e-9)


def test_search_figure_names_every_method_of_each_signal(tmp_path: Path, monkeypatch) -> None:
    """Each row of ``budget.png`` (S, R) has a legend naming the methods drawn in it."""
    import matplotlib.pyplot as plt

    from deeprs.commands import budget

    flat = np.full(ITERATIONS.size, 0.7)
    runs = {
        (0.001, "unet3d"): frame_of(flat, None),
        (0.001, "voxelmorph2"): frame_of(None, flat),
        (0.001, "deeprs"): frame_of(flat, flat),
    }
    write_search(tmp_path, runs)
    figures = []
    monkeypatch.setattr(plt, "close", lambda figure: figures.append(figure))
    budget.plot_search(
        tmp_path, [0.001], ["unet3d", "voxelmorph2", "deeprs"], "fold_0", tmp_path / "b.png"
    )
    (figure,) = figures
    s_axis, r_axis = figure.axes
    legend_names = [
        [text.get_text() for text in axis.get_legend().get_texts()] for axis in (s_axis, r_axis)
    ]
    assert legend_names == [["unet3d", "deeprs"], ["voxelmorph2", "deeprs"]]


def test_search_run_names_round_trip_and_match_the_rules_pattern() -> None:
    for kind, value in (("lr", 0.003), ("lr", 1e-4), ("fold", 1000.0), ("fold", 0.0)):
        name = search_name(kind, value)
        assert re.fullmatch(SEARCH_PATTERN, name), name
        assert parse_search_name(name) == (kind, value)
    assert search_run_folder(Path("r"), "fold", 10, "deeprs", "fold_0") == Path(
        "r/budget/fold_10/deeprs/fold_0"
    )
    for bad in ("lr", "x_1", "lr_"):
        with pytest.raises(ValueError, match="search"):
            parse_search_name(bad)
    with pytest.raises(ValueError, match="unknown search"):
        search_name("width", 1)
