"""Affine registration with itk-elastix, returned as a SimpleITK transform.

Images go to elastix with their real spacing, origin and direction, so the result is a
transform between physical points: it maps a point of the fixed image to the matching
point of the moving image (elastix's convention). Converting it to an
``sitk.AffineTransform`` lets images and labels be resampled with SimpleITK (linear for
images, linear one-hot for labels) and lets tests check it against a known transform.

Creating the first elastix ``ParameterObject`` in a process costs 15-25 s, so one
:class:`AffineRegistrar` is made per process and reused for every case. elastix writes its
log into a temporary folder; :attr:`AffineResult.log` hands it to the caller.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from deeprs.errors import DataError


@dataclass(frozen=True)
class AffineResult:
    """``transform`` maps fixed physical points to moving ones; ``log`` is elastix's log."""

    transform: sitk.AffineTransform
    final_metric: float
    log: str


def resample_to_spacing(image: sitk.Image, spacing_xyz: np.ndarray) -> sitk.Image:
    """A smoothed copy on a grid no finer than ``spacing_xyz`` (never upsampled) over the same extent."""
    current = np.asarray(image.GetSpacing())
    spacing = np.maximum(current, np.asarray(spacing_xyz, dtype=float))
    if np.allclose(spacing, current):
        return image
    size = np.maximum(np.round(np.asarray(image.GetSize()) * current / spacing), 2).astype(int)
    # Anti-alias before decimating: sigma of half the new voxel (mm) along each coarsened axis.
    smoothed = image
    for axis, (new, old) in enumerate(zip(spacing, current, strict=True)):
        if new > old:
            smoothed = sitk.RecursiveGaussian(smoothed, float(0.5 * new), False, 0, axis)
    # Keep the physical extent: the first voxel centre moves by half the growth of a voxel.
    origin = image.TransformContinuousIndexToPhysicalPoint(
        [float(-0.5 + 0.5 * s / c) for s, c in zip(spacing, current, strict=True)]
    )
    return sitk.Resample(
        smoothed,
        [int(v) for v in size],
        sitk.Transform(),
        sitk.sitkLinear,
        origin,
        [float(v) for v in spacing],
        image.GetDirection(),
        float(sitk.GetArrayViewFromImage(image).min()),
        sitk.sitkFloat32,
    )


def smoothing_schedule(spacing_xyz: tuple[float, ...], levels: int) -> list[str]:
    """elastix pyramid factors per level and axis, about isotropic in mm.

    The smoothing pyramid blurs with sigma = factor / 2 voxels. With thick slices (ACDC:
    10 mm) the same factor on every axis would blur the slice axis far more in mm than the
    others, so each axis gets ``2**level * finest_spacing / spacing`` (at least 1).
    """
    finest = min(spacing_xyz)
    schedule: list[str] = []
    for level in range(levels - 1, -1, -1):
        for spacing in spacing_xyz:
            schedule.append(str(max(1, round(2**level * finest / spacing))))
    return schedule


def _final_metric(log_text: str) -> float:
    """The metric value of elastix's last iteration of the last resolution, NaN if absent."""
    value = float("nan")
    for line in log_text.splitlines():
        match = re.match(r"^\s*Final metric value\s*=\s*(\S+)", line)
        if match:
            value = float(match.group(1))
    return value


def _to_sitk_affine(settings: dict[str, tuple[str, ...]]) -> sitk.AffineTransform:
    """elastix's affine, rigid (Euler), similarity or translation map as one ``sitk.AffineTransform``.

    Both use ``T(p) = A (p - c) + c + t``: affine parameters are ``A`` row-major, then
    ``t``; Euler parameters are the angles about x, y, z (ITK's default Z-X-Y order), then ``t``;
    translation parameters are ``t``.
    """
    kind = settings["Transform"][0]
    values = [float(v) for v in settings["TransformParameters"]]
    if kind == "TranslationTransform":
        return sitk.AffineTransform([1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], values[:3], (0, 0, 0))
    center = [float(v) for v in settings["CenterOfRotationPoint"]]
    if kind == "AffineTransform":
        return sitk.AffineTransform(values[:9], values[9:12], center)
    if kind == "EulerTransform":
        euler = sitk.Euler3DTransform(center, *values[:3], values[3:6])
        return sitk.AffineTransform(euler.GetMatrix(), euler.GetTranslation(), center)
    if kind == "SimilarityTransform":
        # ITK's Similarity3DTransform: versor (3), translation (3), isotropic scale.
        similar = sitk.Similarity3DTransform()
        similar.SetCenter(center)
        similar.SetParameters(values[:7])
        return sitk.AffineTransform(similar.GetMatrix(), similar.GetTranslation(), center)
    raise DataError(
        f"elastix returned a '{kind}', expected an affine, rigid, similarity or translation"
    )


class AffineRegistrar:
    """Multi-resolution affine registration (mutual information), one instance per process."""

    def __init__(
        self,
        threads: int = 1,
        resolutions: int = 3,
        iterations: int = 256,
    ) -> None:
        # Threads are set globally, not per call: passing number_of_threads crashed elastix.
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
        import itk

        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
        self._itk = itk
        self.resolutions = resolutions
        self.iterations = iterations
        self._parameter_object = itk.ParameterObject.New()

    def _to_itk(self, image: sitk.Image) -> object:
        """An itk image with the SimpleITK image's voxels and geometry (arrays are z, y, x)."""
        itk = self._itk
        converted = itk.image_from_array(
            np.ascontiguousarray(sitk.GetArrayViewFromImage(image), dtype=np.float32)
        )
        converted.SetSpacing([float(v) for v in image.GetSpacing()])
        converted.SetOrigin([float(v) for v in image.GetOrigin()])
        converted.SetDirection(itk.matrix_from_array(np.reshape(image.GetDirection(), (3, 3))))
        return converted

    def _parameters(
        self,
        fixed: sitk.Image,
        moving: sitk.Image,
        resolutions: int,
        iterations: int,
        transform: str,
    ) -> object:
        parameters = self._itk.ParameterObject.New()
        # elastix has no default "similarity" map: the rigid one with its transform swapped.
        default = "rigid" if transform == "similarity" else transform
        settings = parameters.GetDefaultParameterMap(default, resolutions)
        if transform == "similarity":
            settings["Transform"] = ["SimilarityTransform"]
        settings["MaximumNumberOfIterations"] = [str(iterations)]
        settings["FixedImagePyramidSchedule"] = smoothing_schedule(fixed.GetSpacing(), resolutions)
        settings["MovingImagePyramidSchedule"] = smoothing_schedule(
            moving.GetSpacing(), resolutions
        )
        # Starts are placed by the caller (deeprs.preprocess.align), in physical space.
        settings["AutomaticTransformInitialization"] = ["false"]
        settings["WriteResultImage"] = ["false"]
        parameters.AddParameterMap(settings)
        return parameters

    def register(
        self,
        fixed: sitk.Image,
        moving: sitk.Image,
        name: str = "",
        resolutions: int | None = None,
        iterations: int | None = None,
        transform: str = "affine",
    ) -> AffineResult:
        """The ``transform`` ("affine", "rigid", "similarity" or "translation") taking ``fixed``'s
        physical points onto ``moving``'s.

        elastix starts from the identity (see :mod:`deeprs.preprocess.align` for starts);
        ``resolutions`` and ``iterations`` override the registrar's defaults for one call.
        """
        parameter_object = self._parameters(
            fixed,
            moving,
            resolutions or self.resolutions,
            iterations or self.iterations,
            transform,
        )
        with tempfile.TemporaryDirectory(prefix="deeprs-elastix-") as folder:
            log_path = Path(folder) / "elastix.log"
            try:
                _, transform_parameters = self._itk.elastix_registration_method(
                    self._to_itk(fixed),
                    self._to_itk(moving),
                    parameter_object=parameter_object,
                    output_directory=folder,
                    log_to_file=True,
                    log_to_console=False,
                )
            except RuntimeError as error:
                log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
                tail = " ".join(log_text.strip().splitlines()[-3:]) or str(error).splitlines()[-1]
                raise DataError(
                    f"elastix could not align case '{name}' ({tail}); check that the image "
                    "shows the same anatomy as the reference"
                ) from None
            log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
        transform = _to_sitk_affine(transform_parameters.GetParameterMap(0))
        return AffineResult(transform=transform, final_metric=_final_metric(log_text), log=log_text)


class ElastixLog:
    """Appends every elastix log, with a header naming the registration, to one file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def add(self, title: str, text: str) -> None:
        if self.path is not None:
            with open(self.path, "a") as handle:
                handle.write(f"\n===== {title} =====\n{text}\n")

    def add_all(self, logs: list[tuple[str, str]]) -> None:
        for title, text in logs:
            self.add(title, text)
