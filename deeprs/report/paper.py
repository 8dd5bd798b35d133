"""What the paper reports, and how each method is named, ordered and coloured in print.

The figures are He et al. (MICCAI 2020), Tables 1 and 2: Dice in % as mean ± std over the
test samples of five folds. Keeping them here (not in the tables code) puts every number
copied from the paper in one place that a reader can check against the PDF.
"""

from __future__ import annotations

from dataclasses import dataclass

from deeprs.errors import DeeprsError

REFERENCE_METHOD = "deeprs"
"""The method every other row is tested against (paired Wilcoxon)."""


@dataclass(frozen=True)
class PaperFigure:
    """One cell of the paper's table: mean ± std of Dice in %."""

    mean: float
    std: float

    def __str__(self) -> str:
        return f"{self.mean:.1f} ± {self.std:.1f}"


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table; ``None`` where the paper prints "-" (task not done)."""

    title: str
    registration: PaperFigure | None
    segmentation: PaperFigure | None


TABLE1: dict[str, PaperRow] = {
    "affine": PaperRow("Affine only", PaperFigure(64.6, 10.7), None),
    "voxelmorph2": PaperRow("VoxelMorph-2", PaperFigure(71.7, 10.6), None),
    "advreg": PaperRow("Adv-Reg", PaperFigure(68.8, 10.7), None),
    "unet3d": PaperRow("3D U-Net", None, PaperFigure(78.8, 9.2)),
    "unet3d_aug": PaperRow("3D U-Net-aug", None, PaperFigure(80.0, 12.0)),
    "fcn3d": PaperRow("3D FCN", None, PaperFigure(71.4, 11.3)),
    "vnet": PaperRow("V-Net", None, PaperFigure(69.8, 10.9)),
    "deepatlas": PaperRow("DeepAtlas", PaperFigure(71.3, 10.5), PaperFigure(81.8, 7.5)),
    "hybridcnn": PaperRow("HybridCNN", PaperFigure(69.2, 10.3), PaperFigure(78.8, 7.9)),
    "deeprs": PaperRow("DeepRS", PaperFigure(77.6, 7.9), PaperFigure(85.7, 7.7)),
}
"""Table 1 of the paper, in the paper's row order."""

TABLE2: dict[str, PaperRow] = {
    "ablation_r": PaperRow("R", PaperFigure(72.2, 10.3), None),
    "unet3d": PaperRow("S", None, PaperFigure(78.8, 9.2)),
    "ablation_s": PaperRow("S", None, PaperFigure(78.8, 9.2)),
    "ablation_rs": PaperRow("R+S", PaperFigure(72.9, 10.4), PaperFigure(80.5, 10.2)),
    "ablation_rs_dss": PaperRow("R+S+DSS", PaperFigure(72.9, 9.6), PaperFigure(83.9, 8.3)),
    "ablation_rs_acm": PaperRow("R+S+ACM", PaperFigure(72.5, 10.1), PaperFigure(84.1, 8.3)),
    "ablation_rs_drc": PaperRow("R+S+DRC", PaperFigure(75.9, 9.1), PaperFigure(82.5, 9.2)),
    "deeprs": PaperRow("R+S+DSS+ACM+DRC (DeepRS)", PaperFigure(77.6, 7.9), PaperFigure(85.7, 7.7)),
}
"""Table 2 of the paper. Its "S" row is the 3D U-Net of Table 1 (``unet3d``); the name
``ablation_s`` is accepted for configs that list it separately."""

METHOD_COLOURS: dict[str, str] = {
    "affine": "#9e9e9e",
    "voxelmorph2": "#1f77b4",
    "advreg": "#17becf",
    "unet3d": "#2ca02c",
    "unet3d_aug": "#98df8a",
    "fcn3d": "#bcbd22",
    "vnet": "#8c564b",
    "deepatlas": "#9467bd",
    "hybridcnn": "#ff7f0e",
    "deeprs": "#d62728",
    "ablation_r": "#aec7e8",
    "ablation_s": "#2ca02c",
    "ablation_rs": "#c5b0d5",
    "ablation_rs_dss": "#f7b6d2",
    "ablation_rs_acm": "#c49c94",
    "ablation_rs_drc": "#dbdb8d",
}
"""One fixed colour per method, the same in every figure; DeepRS is red as in Fig. 5."""

FALLBACK_COLOURS = ("#7f7f7f", "#e377c2", "#393b79", "#637939", "#8c6d31", "#843c39")

STRUCTURE_COLOURS: dict[str, str] = {
    "myo": "#ff69b4",
    "la": "#1f4fff",
    "lv": "#00c000",
    "ra": "#ffd700",
    "rv": "#a020f0",
    "aa": "#ff2020",
    "pa": "#ff8c00",
}
"""Contour colours of Figs. 6 and 7 (Myo pink, LA blue, LV green, RA yellow, RV purple,
aorta red); the paper shows no pulmonary artery, which gets orange."""

STRUCTURE_TITLES: dict[str, str] = {
    "myo": "Myo",
    "la": "LA",
    "lv": "LV",
    "ra": "RA",
    "rv": "RV",
    "aa": "AA",
    "pa": "PA",
}


def method_title(name: str) -> str:
    """The method's name as printed in the paper's Table 1 (the registry's title if known)."""
    if name in TABLE1:
        return TABLE1[name].title
    try:
        from deeprs.methods import get_method

        return str(get_method(name).title)
    except (ImportError, DeeprsError):  # a name the registry does not know prints as itself
        return name


def ablation_title(name: str) -> str:
    """The row label of Table 2 (the components switched on), or the method title."""
    return TABLE2[name].title if name in TABLE2 else method_title(name)


def does_task(name: str, task: str) -> bool:
    """False when the paper's tables print "-" for this method and task (``registration``
    or ``segmentation``); methods the paper does not list are assumed to do both."""
    row = TABLE1.get(name) or TABLE2.get(name)
    return row is None or getattr(row, task) is not None


def method_colour(name: str, order: list[str]) -> str:
    """The fixed colour of a method; names the table does not know get a stable fallback."""
    if name in METHOD_COLOURS:
        return METHOD_COLOURS[name]
    unknown = [method for method in order if method not in METHOD_COLOURS]
    index = unknown.index(name) if name in unknown else 0
    return FALLBACK_COLOURS[index % len(FALLBACK_COLOURS)]


def structure_colour(name: str, order: list[str]) -> str:
    """Contour colour of a structure; names outside MM-WHS get tab10 colours by position."""
    if name in STRUCTURE_COLOURS:
        return STRUCTURE_COLOURS[name]
    from matplotlib import colormaps, colors

    return colors.to_hex(colormaps["tab10"](order.index(name) % 10))


def structure_title(name: str) -> str:
    return STRUCTURE_TITLES.get(name, name)
