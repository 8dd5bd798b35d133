"""One palette for every figure: a fixed, colour-blind-safe colour per method and structure.

Structures use the Okabe-Ito palette (distinguishable under the common colour-vision
deficiencies); methods use Paul Tol's "muted" and "light" schemes, DeepRS in Tol's rose as
the paper draws it in red, Affine only in grey. Names outside these tables get stable
fallback colours by position, so a new cohort or method still draws without edits here.
"""

from __future__ import annotations

METHOD_COLOURS: dict[str, str] = {
    "affine": "#999999",
    "voxelmorph2": "#332288",
    "advreg": "#88CCEE",
    "unet3d": "#117733",
    "unet3d_aug": "#999933",
    "fcn3d": "#DDCC77",
    "vnet": "#44AA99",
    "deepatlas": "#AA4499",
    "hybridcnn": "#882255",
    "deeprs": "#CC6677",
    "ablation_r": "#77AADD",
    "ablation_s": "#117733",
    "ablation_rs": "#EE8866",
    "ablation_rs_dss": "#EEDD88",
    "ablation_rs_acm": "#FFAABB",
    "ablation_rs_drc": "#99DDFF",
}
"""One fixed colour per method, the same in every figure."""

METHOD_MARKERS: dict[str, str] = {
    "deeprs": "o",
    "unet3d": "s",
    "unet3d_aug": "D",
    "fcn3d": "v",
    "vnet": "P",
    "deepatlas": "X",
    "hybridcnn": "h",
    "voxelmorph2": "p",
    "advreg": "*",
}
"""Line-plot markers, so that curves differ in shape as well as colour."""

METHOD_LINESTYLES: dict[str, str] = {"deeprs": "-", "unet3d": "--"}
"""Line styles: DeepRS solid, the 3D U-Net dashed, other methods dash-dotted."""

FALLBACK_COLOURS = ("#BBCC33", "#AAAA00", "#DDDDDD", "#000000", "#0077BB", "#EE7733")

STRUCTURE_COLOURS: dict[str, str] = {
    "myo": "#CC79A7",
    "la": "#0072B2",
    "lv": "#009E73",
    "ra": "#F0E442",
    "rv": "#56B4E9",
    "aa": "#D55E00",
    "pa": "#E69F00",
}
"""Okabe-Ito colours, close to the paper's Figs. 6-7 (Myo pink, LA blue, LV green, RA yellow,
aorta red-orange); RV sky blue and PA orange keep all seven distinct."""

STRUCTURE_FALLBACK = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
"""Okabe-Ito by position, for structure names outside MM-WHS and ACDC."""

STRUCTURE_TITLES: dict[str, str] = {
    "myo": "Myo",
    "la": "LA",
    "lv": "LV",
    "ra": "RA",
    "rv": "RV",
    "aa": "AA",
    "pa": "PA",
}


def method_colour(name: str, order: list[str] | None = None) -> str:
    """The fixed colour of a method; names the table does not know get a stable fallback."""
    if name in METHOD_COLOURS:
        return METHOD_COLOURS[name]
    unknown = [method for method in (order or [name]) if method not in METHOD_COLOURS]
    index = unknown.index(name) if name in unknown else 0
    return FALLBACK_COLOURS[index % len(FALLBACK_COLOURS)]


def method_marker(name: str) -> str:
    return METHOD_MARKERS.get(name, "^")


def method_linestyle(name: str) -> str:
    return METHOD_LINESTYLES.get(name, "-.")


def structure_colour(name: str, order: list[str] | None = None) -> str:
    """Colour of a structure; unknown names take Okabe-Ito colours by their position in ``order``."""
    if name in STRUCTURE_COLOURS:
        return STRUCTURE_COLOURS[name]
    position = (order or [name]).index(name) if name in (order or [name]) else 0
    return STRUCTURE_FALLBACK[position % len(STRUCTURE_FALLBACK)]


def structure_colours(names: list[str]) -> list[str]:
    """Colours of ``names`` in order, all distinct (fallbacks skip colours already used)."""
    used: list[str] = []
    for position, name in enumerate(names):
        colour = structure_colour(name, names)
        if colour in used:
            colour = next(
                (c for c in STRUCTURE_FALLBACK if c not in used),
                STRUCTURE_FALLBACK[position % len(STRUCTURE_FALLBACK)],
            )
        used.append(colour)
    return used


def structure_title(name: str) -> str:
    return STRUCTURE_TITLES.get(name, name)
