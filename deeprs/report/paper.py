"""What the paper reports, and how each method is named, ordered and coloured in print.

The figures are He et al. (ECCV 2020), Tables 1 and 2: Dice in % as mean ± std over the
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
