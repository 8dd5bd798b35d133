"""Affine alignment of one case to the reference that survives obliquity and catches failures.

elastix's affine optimiser only finds the nearest optimum, and its final metric does not
tell a good optimum from a wrong one (a case whose header was rotated by 40 degrees about
two axes ended with a *better* metric at Dice 0.41). So each case is registered from a few
physically motivated starts:

* ``headers``: the case's voxel axes laid on the reference's (direction cosines), box
  centre on box centre. Scans are planned relative to the anatomy (short-axis stacks
  follow the heart), so this start holds when the headers are oblique or rotated.
* ``centres``: no rotation in physical space, box centre on box centre (patients lie
  alike); elastix's usual start.

Each result is checked (determinant, singular values, stretch anisotropy within bounds
that anatomy allows) and scored by one similarity computed the same way for every case
(symmetric normalised mutual information of the reference crop and the case's box).
The best plausible result wins; when no affine result is plausible, a similarity
registration (rigid + isotropic scale) from the best start is used if plausible, else a
rigid or translation-only one, and the case is flagged. Starts
that differ by less than :data:`SAME_START_DEGREES` are run once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from deeprs.data.geometry import rotation_matrix
from deeprs.errors import DataError
from deeprs.preprocess.affine import AffineRegistrar

log = logging.getLogger(__name__)

# Plausible bounds of an affine map between two hearts (reference to case). Wide on
# purpose: on ACDC's short stacks of thick slices elastix squeezes the slice axis of most
# cases (determinant 0.2-0.5), and those maps still raise the Dice to the reference; the
# collapses that ruin a case go far lower (a held-out LGE cohort: 0.025-0.2).
MIN_SCALE, MAX_SCALE = 0.25, 4.0
MIN_DETERMINANT, MAX_DETERMINANT = 0.2, 5.0
MAX_ANISOTROPY = 4.0
SAME_START_DEGREES = 5.0
HISTOGRAM_BINS = 32


@dataclass(frozen=True)
class Start:
    """A rigid initial map from reference points to case points, and why it is tried."""

    name: str
    matrix: np.ndarray
    translation: np.ndarray

    def inverse_point(self, point: Sequence[float]) -> np.ndarray:
        return self.matrix.T @ (np.asarray(point, float) - self.translation)


@dataclass(frozen=True)
class AffineFigures:
    """What a person checks in an affine map: size change, stretch and turn."""

    determinant: float
    scales: tuple[float, float, float]
    rotation_degrees: float

    @classmethod
    def of(cls, transform: sitk.AffineTransform) -> AffineFigures:
        matrix = np.reshape(transform.GetMatrix(), (3, 3))
        u, singular, vt = np.linalg.svd(matrix)
        rotation = u @ vt
        cosine = np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0)
        return cls(
            float(np.linalg.det(matrix)),
            tuple(float(v) for v in sorted(singular)),  # type: ignore[arg-type]
            float(np.degrees(np.arccos(cosine))),
        )

    def problem(self) -> str | None:
        """Why the map is implausible for anatomy, or None."""
        if not MIN_DETERMINANT <= self.determinant <= MAX_DETERMINANT:
            return f"determinant {self.determinant:.3f}"
        low, high = self.scales[0], self.scales[-1]
        if low < MIN_SCALE or high > MAX_SCALE:
            return f"scales {low:.2f}-{high:.2f}"
        if high / low > MAX_ANISOTROPY:
            return f"stretch anisotropy {high / low:.2f}"
        return None


@dataclass
class Alignment:
    """The chosen map (reference to case points), its figures, similarity and flags."""

    transform: sitk.AffineTransform
    figures: AffineFigures
    start: str
    elastix_metric: float
    similarity: float
    flags: list[str] = field(default_factory=list)
    logs: list[tuple[str, str]] = field(default_factory=list)
    tried: list[str] = field(default_factory=list)
    """One line per start: its outcome (plausible or why not) and similarity."""
    problem: str | None = None
    """Why the result is implausible (figures or a turned slice axis), or None."""


def box_centre(image: sitk.Image) -> np.ndarray:
    """Physical centre of an image's voxel block (mm)."""
    return np.asarray(
        image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    )


def _nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        u[:, -1] *= -1
        rotation = u @ vt
    return rotation


def default_starts(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_scan_axes: Sequence[float] | None = None,
    moving_scan_axes: Sequence[float] | None = None,
) -> list[Start]:
    """``headers`` then ``centres`` (see the module docstring), both centre on centre.

    ``*_scan_axes`` are the files' own direction matrices (voxel axes as scanned, before
    reorientation to LPS); they default to the images' directions.
    """
    fixed_centre, moving_centre = box_centre(fixed), box_centre(moving)
    fixed_axes = np.reshape(fixed_scan_axes or fixed.GetDirection(), (3, 3))
    moving_axes = np.reshape(moving_scan_axes or moving.GetDirection(), (3, 3))
    # Scan axes of opposite handedness cannot be matched by a rotation: use the nearest one.
    headers = _nearest_rotation(moving_axes @ fixed_axes.T)
    starts = []
    for name, rotation in (("headers", headers), ("centres", np.eye(3))):
        starts.append(Start(name, rotation, moving_centre - rotation @ fixed_centre))
    return starts


def turned_starts(starts: Sequence[Start], centre: Sequence[float]) -> list[Start]:
    """``starts`` and, for each, its quarter and half turns about the reference's axes
    through ``centre`` (the reference box's centre, mm).

    For cases that the default starts aligned badly: a heart imaged upside down or on its
    side in an unusual header still has one start near it.
    """
    turns = [("", np.eye(3))]
    for axis in range(3):
        for degrees in (90, 180, 270):
            angles = np.zeros(3)
            angles[axis] = degrees
            turns.append((f" turned {degrees} about {'xyz'[axis]}", rotation_matrix(angles)))
    turned = []
    for start in starts:
        for suffix, turn in turns:
            matrix = start.matrix @ turn
            point = np.asarray(centre, float)
            translation = start.translation + start.matrix @ (point - turn @ point)
            turned.append(Start(start.name + suffix, matrix, translation))
    return turned


def distinct_starts(starts: Sequence[Start]) -> list[Start]:
    """``starts`` without those within :data:`SAME_START_DEGREES` of an earlier one."""
    kept: list[Start] = []
    for start in starts:
        if all(_angle(start.matrix, other.matrix) >= SAME_START_DEGREES for other in kept):
            kept.append(start)
    return kept


def _angle(first: np.ndarray, second: np.ndarray) -> float:
    relative = _nearest_rotation(first) @ _nearest_rotation(second).T
    return float(np.degrees(np.arccos(np.clip((np.trace(relative) - 1) / 2, -1.0, 1.0))))


def _absorb(moving: sitk.Image, start: Start) -> sitk.Image:
    """``moving`` with its header moved by the start's inverse (voxels untouched).

    elastix then registers from the identity: a point ``q'`` of the new header is the
    point ``start(q')`` of the real image.
    """
    shifted = sitk.Image(moving)
    if start.matrix.shape != (3, 3) or not np.allclose(start.matrix.T @ start.matrix, np.eye(3)):
        raise ValueError("a start must be a rotation")
    direction = start.matrix.T @ np.reshape(moving.GetDirection(), (3, 3))
    shifted.SetDirection([float(v) for v in direction.ravel()])
    shifted.SetOrigin([float(v) for v in start.inverse_point(moving.GetOrigin())])
    return shifted


def _compose(start: Start, inner: sitk.AffineTransform) -> sitk.AffineTransform:
    """``start(inner(p))`` as one affine transform (centre at the origin)."""
    inner_matrix = np.reshape(inner.GetMatrix(), (3, 3))
    centre = np.asarray(inner.GetCenter())
    inner_offset = np.asarray(inner.GetTranslation()) + centre - inner_matrix @ centre
    matrix = start.matrix @ inner_matrix
    offset = start.matrix @ inner_offset + start.translation
    return sitk.AffineTransform(
        [float(v) for v in matrix.ravel()], [float(v) for v in offset], (0.0, 0.0, 0.0)
    )


def rigid_as_affine(start: Start) -> sitk.AffineTransform:
    return sitk.AffineTransform(
        [float(v) for v in start.matrix.ravel()],
        [float(v) for v in start.translation],
        (0.0, 0.0, 0.0),
    )


def _nmi(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Normalised mutual information (H(a) + H(b)) / H(a, b) of ``fixed`` and ``moving``
    sampled through ``transform`` on ``fixed``'s grid; points leaving ``moving`` read its
    minimum."""
    fill = float(sitk.GetArrayViewFromImage(moving).min())
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, fill, sitk.sitkFloat32)
    a = sitk.GetArrayViewFromImage(fixed).ravel()
    b = sitk.GetArrayViewFromImage(warped).ravel()
    joint, _, _ = np.histogram2d(a, b, bins=HISTOGRAM_BINS)
    joint /= joint.sum()

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    return (entropy(joint.sum(axis=1)) + entropy(joint.sum(axis=0))) / entropy(joint.ravel())


def similarity(fixed: sitk.Image, moving: sitk.Image, transform: sitk.AffineTransform) -> float:
    """Symmetric normalised mutual information: the mean of both directions.

    One direction alone rewards a collapse (squeezing the reference into a small, uniform
    part of the case raised it on ACDC); the inverse direction then spreads the case over
    the reference box and beyond it, which costs as much.
    """
    return 0.5 * (_nmi(fixed, moving, transform) + _nmi(moving, fixed, transform.GetInverse()))


def align(
    registrar: AffineRegistrar,
    fixed: sitk.Image,
    moving: sitk.Image,
    name: str,
    starts: Sequence[Start] | None = None,
    resolutions: int | None = None,
    iterations: int | None = None,
    view: Callable[[np.ndarray], sitk.Image] | None = None,
    keeps_slice_axis: Callable[[sitk.AffineTransform], bool] | None = None,
) -> Alignment:
    """The plausible affine map from ``fixed`` to ``moving`` points with the best similarity.

    ``view``, when given, gives the moving image for a start's rotation (the case seen
    along the reference's axes as that start turns them); each start keeps its rotation,
    is placed box centre on box centre of its own view and registers on it (the centre
    of a box around the heart moves with the box's axes: 16 mm for a header turned 40
    degrees about two axes). Every result is scored on ``moving``, so that similarities
    compare across starts and cases. Without ``view`` every start registers ``moving``.

    ``keeps_slice_axis``, when given, tells whether a map keeps a stack's slice axis on the
    grid's; a result that turns it on its side, from a start that did not, is implausible.

    ``starts`` defaults to :func:`default_starts`; an implausible result (see
    :meth:`AffineFigures.problem`) is never chosen; when every start's is, a similarity
    registration from the start with the best similarity is used if plausible, else the
    rigid or translation result (the better similarity), and the case is flagged. A start whose
    registration fails is skipped; when none succeeds, the case is reported (DataError).
    """
    centre = box_centre(fixed)

    def placed(listed: Sequence[Start]) -> list[Start]:
        if view is None:
            return list(listed)
        return [
            Start(s.name, s.matrix, box_centre(view(s.matrix)) - s.matrix @ centre) for s in listed
        ]

    candidates = placed(
        distinct_starts(starts if starts is not None else default_starts(fixed, moving))
    )
    outcomes: list[str] = []
    logs: list[tuple[str, str]] = []

    def seen(start: Start) -> sitk.Image:
        return view(start.matrix) if view is not None else moving

    def attempt(start: Start, kind: str) -> Alignment | None:
        label = start.name if kind == "affine" else f"{start.name} ({kind} fallback)"
        try:
            result = registrar.register(
                fixed,
                _absorb(seen(start), start),
                name,
                resolutions=resolutions,
                iterations=iterations,
                transform=kind,
            )
        except DataError as error:
            outcomes.append(f"{label}: failed ({error})")
            return None
        logs.append((f"{name}: {kind} from start '{start.name}'", result.log))
        transform = _compose(start, result.transform)
        alignment = Alignment(
            transform,
            AffineFigures.of(transform),
            label,
            result.final_metric,
            similarity(fixed, moving, transform),
        )
        problem = alignment.figures.problem()
        if (
            problem is None
            and keeps_slice_axis is not None
            and keeps_slice_axis(rigid_as_affine(start))
            and not keeps_slice_axis(transform)
        ):
            problem = "slice axis turned on its side"
        alignment.problem = problem
        outcomes.append(f"{label}: {problem or 'plausible'}, similarity {alignment.similarity:.4f}")
        return alignment

    tried = [a for a in (attempt(start, "affine") for start in candidates) if a is not None]
    plausible = [a for a in tried if a.problem is None]
    flags: list[str] = []
    if plausible:
        chosen: Alignment | None = max(plausible, key=lambda a: a.similarity)
    else:
        # A similarity (rigid + isotropic scale) first, when plausible; else rigid or a
        # translation, the one with the better similarity (rigid can still turn a short
        # stack of thick slices on its side, a translation cannot). Measured on the 18 ACDC
        # cases without a plausible affine (docs/methods.md): mean pairwise Dice 0.365 this
        # way, 0.330 with rigid or translation alone, 0.349 choosing all three by similarity.
        worst = "; ".join(outcomes[: len(candidates)])
        best_start = max(candidates, key=lambda s: similarity(fixed, moving, rigid_as_affine(s)))
        scaled = attempt(best_start, "similarity")
        if scaled is not None and scaled.problem is None:
            chosen = scaled
        else:
            fallbacks = [attempt(best_start, kind) for kind in ("rigid", "translation")]
            usable = [a for a in fallbacks if a is not None]
            chosen = max(
                [a for a in usable if a.problem is None] or usable,
                key=lambda a: a.similarity,
                default=None,
            )
        used = chosen.start if chosen else "none"
        flags.append(f"no plausible affine ({worst}); {used} used")
    if chosen is None:
        raise DataError(
            f"case '{name}' could not be aligned to the reference ({'; '.join(outcomes)}); "
            "check that it shows the same anatomy, or choose another preprocess.reference"
        )
    chosen.flags = flags
    chosen.logs = logs
    chosen.tried = outcomes
    for flag in flags:
        log.warning("case %s: %s", name, flag)
    return chosen
