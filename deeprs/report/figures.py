"""Box plots of Dice per structure (Fig. 5) and the label-amount curve (Fig. 8).

Every figure draws methods in the order they are listed and in the fixed colours, markers
and line styles of ``deeprs.palette``, so a method looks the same in every plot; DeepRS is
Tol's rose, with a black outline on its boxes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from deeprs.io import atomic_path  # noqa: E402
from deeprs.palette import method_colour, method_linestyle, method_marker  # noqa: E402
from deeprs.report.collect import sample_scores  # noqa: E402
from deeprs.report.paper import REFERENCE_METHOD, does_task  # noqa: E402

MEAN_GROUP = "Mean"


def save_figure(figure: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as temporary:
        figure.savefig(
            temporary, format=Path(path).suffix.lstrip("."), dpi=150, bbox_inches="tight"
        )
    return Path(path)


def dice_axis_floor(values: pd.Series) -> float:
    """Lower end of a Dice (%) axis: the tens below the lowest value, so boxes are not
    squeezed into the top of a 0-100 axis; the axis always ends at 100."""
    lowest = values.min() if len(values) else 0.0
    return 0.0 if pd.isna(lowest) else float(max(0.0, np.floor(lowest / 10.0) * 10.0))


def _missing_note(missing: list[str]) -> str:
    return f"no metrics: {', '.join(missing)}" if missing else ""


def boxplot_dice(
    frame: pd.DataFrame,
    task: str,
    methods: list[str],
    structures: list[str],
    title: Callable[[str], str],
    structure_title: Callable[[str], str],
    out_stem: Path,
) -> list[Path]:
    """Dice (%) per structure and per method of one task, plus the per-sample mean.

    Methods without rows for ``task`` are left out of the boxes; those that were expected
    to have them (listed but with no metrics) are named under the plot.
    """
    rows = frame[(frame["task"] == task) & frame["method"].isin(methods)]
    present = [method for method in dict.fromkeys(methods) if method in set(rows["method"])]
    per_structure = rows.assign(group=rows["structure"].map(structure_title))
    means = sample_scores(rows).assign(group=MEAN_GROUP)
    data = pd.concat([per_structure, means], ignore_index=True)
    data = data.assign(dice_pct=data["dice"] * 100, label=data["method"].map(title))
    groups = [structure_title(name) for name in structures] + [MEAN_GROUP]
    order = list(dict.fromkeys(methods))
    palette = {title(method): method_colour(method, order) for method in present}

    width = max(9.0, 0.3 * len(groups) * max(len(present), 1) + 2.5)
    figure, axes = plt.subplots(figsize=(width, 6.0))
    if present:
        sns.boxplot(
            data=data,
            x="group",
            y="dice_pct",
            hue="label",
            order=groups,
            hue_order=[title(method) for method in present],
            palette=palette,
            saturation=1,
            fliersize=2,
            linewidth=0.8,
            ax=axes,
        )
        axes.legend(
            title=None,
            ncol=min(len(present), 7),
            fontsize=12,
            handlelength=1.6,
            loc="lower left",
            bbox_to_anchor=(0, 1.02),
            frameon=False,
        )
        _outline_reference(axes, title(REFERENCE_METHOD), method_colour(REFERENCE_METHOD, order))
    else:
        axes.text(
            0.5, 0.5, "no metrics for this task", ha="center", va="center", transform=axes.transAxes
        )
    axes.axvline(len(groups) - 1.5, color="0.6", linewidth=0.8, linestyle=":")
    axes.set_ylim(dice_axis_floor(data["dice_pct"]), 100)
    axes.set_xlabel("structure (Mean: per-sample mean over structures)", fontsize=12)
    axes.set_ylabel(f"{task.capitalize()} Dice (%)", fontsize=12)
    axes.tick_params(labelsize=11)
    note = _missing_note([title(m) for m in order if m not in present and does_task(m, task)])
    if note:
        axes.annotate(note, (0, -0.16), xycoords="axes fraction", fontsize=10, color="0.3")
    sns.despine(ax=axes)
    paths = [save_figure(figure, Path(f"{out_stem}.{suffix}")) for suffix in ("svg", "png")]
    plt.close(figure)
    return paths


def _outline_reference(axes: plt.Axes, reference_label: str, reference_colour: str) -> None:
    """Thicker black outline on the reference method's boxes (found by their colour)."""
    target = to_rgba(reference_colour)
    for patch in axes.patches:
        if np.allclose(patch.get_facecolor(), target, atol=0.02):
            patch.set_linewidth(1.6)
            patch.set_edgecolor("black")
    legend = axes.get_legend()
    for text in legend.get_texts() if legend else []:
        if text.get_text() == reference_label:
            text.set_fontweight("bold")


def label_amount_table(samples: pd.DataFrame, expected: pd.DataFrame) -> pd.DataFrame:
    """Dice (%) per method, label amount and repeat, plus a ``repeat = all`` row per point.

    Per-repeat rows: mean and std over that repeat's test images. ``all`` rows: the mean of
    the repeats' means, ``repeat_std_pct`` their std (ddof=1; the spread due to which
    images were labelled, NaN for one repeat) and ``dice_std_pct`` the std over every test
    image of every repeat. ``expected`` lists every (method, n_labels, repeat) asked for,
    so that runs without metrics appear with ``status = missing`` and no numbers.
    """
    segmentation = samples[samples["task"] == "segmentation"].copy()
    segmentation["repeat"] = segmentation["repeat"].astype(int)
    keys = ["method", "n_labels", "repeat"]

    def summary(grouped: pd.core.groupby.SeriesGroupBy) -> pd.DataFrame:
        return grouped.agg(
            n_samples="count",
            dice_mean_pct=lambda d: d.mean() * 100,
            dice_std_pct=lambda d: d.std(ddof=1) * 100,
        ).reset_index()

    per_repeat = summary(segmentation.groupby(keys)["dice"])
    per_repeat = expected.merge(per_repeat, on=keys, how="left")
    per_repeat["status"] = per_repeat["n_samples"].map(lambda n: "ok" if n > 0 else "missing")
    per_repeat["n_samples"] = per_repeat["n_samples"].fillna(0).astype(int)
    per_repeat["n_repeats"] = (per_repeat["status"] == "ok").astype(int)
    done = per_repeat[per_repeat["status"] == "ok"]
    pooled = (
        done.groupby(["method", "n_labels"])["dice_mean_pct"]
        .agg(n_repeats="count", dice_mean_pct="mean", repeat_std_pct=lambda d: d.std(ddof=1))
        .reset_index()
    )
    images = summary(segmentation.groupby(["method", "n_labels"])["dice"])
    pooled = pooled.merge(images[["method", "n_labels", "n_samples", "dice_std_pct"]])
    pooled["repeat"] = "all"
    pooled["status"] = "ok"
    per_repeat["repeat"] = per_repeat["repeat"].astype(str)
    table = pd.concat([per_repeat, pooled], ignore_index=True)
    method_rank = {name: index for index, name in enumerate(dict.fromkeys(expected["method"]))}
    table["rank"] = table["method"].map(method_rank)
    table = table.sort_values(["rank", "n_labels", "repeat"]).drop(columns="rank")
    columns = [
        "method",
        "n_labels",
        "repeat",
        "status",
        "n_samples",
        "n_repeats",
        "dice_mean_pct",
        "dice_std_pct",
        "repeat_std_pct",
    ]
    return table.reindex(columns=columns).reset_index(drop=True)


def label_amount_plot(
    table: pd.DataFrame, methods: list[str], title: Callable[[str], str], out_path: Path
) -> Path:
    """Mean Dice against the number of labels from ``label_amount_table``.

    One curve per method (its colour, marker and line style, so curves differ without
    colour), the band ± 1 std over repeats, and a small hollow marker per repeat's mean.
    """
    order = list(dict.fromkeys(methods))
    pooled = table[table["repeat"] == "all"]
    repeats = table[(table["repeat"] != "all") & (table["status"] == "ok")]
    present = [method for method in order if method in set(pooled["method"])]
    figure, axes = plt.subplots(figsize=(8.0, 5.6))
    lowest = []
    for method in present:
        colour = method_colour(method, order)
        points = pooled[pooled["method"] == method].sort_values("n_labels")
        x = points["n_labels"].to_numpy(dtype=float)
        mean = points["dice_mean_pct"].to_numpy(dtype=float)
        spread = points["repeat_std_pct"].fillna(0).to_numpy(dtype=float)
        n_repeats = int(points["n_repeats"].max())
        axes.fill_between(x, mean - spread, mean + spread, color=colour, alpha=0.2, linewidth=0)
        axes.plot(
            x,
            mean,
            color=colour,
            marker=method_marker(method),
            linestyle=method_linestyle(method),
            markersize=8,
            linewidth=2,
            label=f"{title(method)} (mean of {n_repeats} repeat{'s' if n_repeats != 1 else ''})",
        )
        own = repeats[repeats["method"] == method]
        axes.plot(
            own["n_labels"].to_numpy(dtype=float),
            own["dice_mean_pct"].to_numpy(dtype=float),
            linestyle="none",
            marker=method_marker(method),
            markersize=5,
            markerfacecolor="none",
            markeredgecolor=colour,
        )
        lowest += [*(mean - spread), *own["dice_mean_pct"]]
    if present:
        axes.set_xticks(sorted(pooled["n_labels"].unique()))
        axes.legend(title=None, frameon=False, loc="lower right", fontsize=11)
        several = pooled["n_repeats"].max() > 1
        axes.set_title(
            "line: mean over repeats; band: ± 1 std over repeats; hollow markers: one repeat each"
            if several
            else "one repeat per point: no spread over draws of the labelled images",
            fontsize=10,
            color="0.3",
        )
    else:
        axes.text(
            0.5, 0.5, "no label-amount metrics", ha="center", va="center", transform=axes.transAxes
        )
    note = _missing_note([title(method) for method in order if method not in present])
    if note:
        axes.annotate(note, (0, -0.16), xycoords="axes fraction", fontsize=9, color="0.3")
    axes.set_ylim(dice_axis_floor(pd.Series(lowest, dtype=float)), 100)
    axes.set_xlabel("labelled training images", fontsize=12)
    axes.set_ylabel("Segmentation Dice (%), mean over structures", fontsize=12)
    axes.tick_params(labelsize=11)
    axes.grid(axis="y", color="0.9")
    sns.despine(ax=axes)
    path = save_figure(figure, out_path)
    plt.close(figure)
    return path
