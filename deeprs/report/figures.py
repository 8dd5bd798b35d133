"""Box plots of Dice per structure (Fig. 5) and the label-amount curve (Fig. 8).

Every figure draws methods in the order they are listed and in the fixed colours of
``deeprs.report.paper``, so a method looks the same in every plot; DeepRS is red, with a
thicker outline.
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
from deeprs.palette import method_colour  # noqa: E402
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

    width = max(6.0, 0.28 * len(groups) * max(len(present), 1) + 2.0)
    figure, axes = plt.subplots(figsize=(width, 4.2))
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
            ncol=min(len(present), 8),
            fontsize=8,
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
    axes.set_xlabel("")
    axes.set_ylabel(f"{task.capitalize()} Dice (%)")
    note = _missing_note([title(m) for m in order if m not in present and does_task(m, task)])
    if note:
        axes.annotate(note, (0, -0.12), xycoords="axes fraction", fontsize=8, color="0.3")
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
    """Mean ± std Dice (%) per method, label amount and repeat, plus ``repeat = all``.

    ``expected`` lists every (method, n_labels, repeat) asked for, so that runs without
    metrics appear with ``status = missing`` and no numbers.
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
    pooled = summary(segmentation.groupby(["method", "n_labels"])["dice"])
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
        "dice_mean_pct",
        "dice_std_pct",
    ]
    return table[columns].reset_index(drop=True)


def label_amount_plot(
    samples: pd.DataFrame, methods: list[str], title: Callable[[str], str], out_path: Path
) -> Path:
    """Mean Dice against the number of labels; band = std over all samples of all repeats."""
    segmentation = samples[samples["task"] == "segmentation"]
    order = list(dict.fromkeys(methods))
    present = [method for method in order if method in set(segmentation["method"])]
    data = segmentation.assign(
        dice_pct=segmentation["dice"] * 100, label=segmentation["method"].map(title)
    )
    figure, axes = plt.subplots(figsize=(5.2, 3.8))
    if present:
        sns.lineplot(
            data=data,
            x="n_labels",
            y="dice_pct",
            hue="label",
            hue_order=[title(method) for method in present],
            palette={title(method): method_colour(method, order) for method in present},
            errorbar="sd",
            marker="o",
            ax=axes,
        )
        repeat_means = (
            data.groupby(["label", "n_labels", "repeat"])["dice_pct"].mean().reset_index()
        )
        sns.stripplot(
            data=repeat_means,
            x="n_labels",
            y="dice_pct",
            hue="label",
            native_scale=True,
            hue_order=[title(method) for method in present],
            palette={title(method): method_colour(method, order) for method in present},
            marker="x",
            size=5,
            linewidth=1,
            jitter=False,
            legend=False,
            ax=axes,
        )
        axes.set_xticks(sorted(data["n_labels"].unique()))
        axes.legend(title=None, frameon=False, loc="lower right")
        axes.set_title(
            "line: mean, band: ± 1 std over test images (all repeats), x: one repeat's mean",
            fontsize=7,
            color="0.3",
        )
    else:
        axes.text(
            0.5, 0.5, "no label-amount metrics", ha="center", va="center", transform=axes.transAxes
        )
    note = _missing_note([title(method) for method in order if method not in present])
    if note:
        axes.annotate(note, (0, -0.2), xycoords="axes fraction", fontsize=8, color="0.3")
    grouped = data.groupby(["label", "n_labels"])["dice_pct"]
    band_bottom = (grouped.mean() - grouped.std().fillna(0)).reset_index(drop=True)
    axes.set_ylim(dice_axis_floor(pd.concat([data["dice_pct"], band_bottom])), 100)
    axes.set_xlabel("labelled training images")
    axes.set_ylabel("Segmentation Dice (%), mean over structures")
    axes.grid(axis="y", color="0.9")
    sns.despine(ax=axes)
    path = save_figure(figure, out_path)
    plt.close(figure)
    return path
