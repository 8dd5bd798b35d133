"""Verified atomic writes and small file helpers shared by every step.

Every output goes through :func:`atomic_path`: it is written under a temporary name in
the same folder, flushed to disk, read back, and renamed into place only when it reads
back whole. An interrupted job therefore never leaves a file that looks finished, and a
full disk never leaves a truncated one: the write stops with one :class:`WriteError`
line naming the file and the cause (the CLI prints it and exits 2).

The read-back depends on the file's kind (:func:`verifier_for`): images are decompressed
and read with SimpleITK, ``.pt`` checkpoints (zip archives) have every record's CRC
checked, PNGs their chunk CRCs, ``.npy`` arrays their header against their size, JSON is
parsed, and text written by :func:`write_text` must read back byte for byte. SimpleITK's
``WriteImage`` reports a full disk only on stderr (``** ERROR: NWAD: wrote only 0 of ...
bytes``) and returns normally, so :func:`write_image` also compares the voxels it reads
back with those it wrote.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deeprs.errors import WriteError

if TYPE_CHECKING:
    import SimpleITK as sitk

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
# With less free space than this left after a failed write, the disk is what failed.
NEARLY_FULL_BYTES = 1 << 20
_FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}

Verifier = Callable[[Path], None]


class Unverified(Exception):
    """A written file that does not read back as what was written (reason in the message)."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _suffixes(path: Path) -> str:
    """`.nii.gz` for `a.nii.gz`: writers such as SimpleITK pick the format from it."""
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix


def _free_bytes(folder: Path) -> int | None:
    try:
        usage = os.statvfs(folder)
    except OSError:
        return None
    return usage.f_bavail * usage.f_frsize


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def describe_write_failure(target: Path, error: BaseException) -> str:
    """One sentence for a failed write of ``target``: a full disk, an OS error or a bad read-back.

    Writers outside Python (torch's zip writer, SimpleITK) do not say why they failed, so
    without an errno a nearly full file system is taken as the cause.
    """
    code = getattr(error, "errno", None)
    free = _free_bytes(target.parent) if target.parent.exists() else None
    if code in _FULL_DISK_ERRNOS or (
        code is None and free is not None and free < NEARLY_FULL_BYTES
    ):
        return f"no space left on device while writing '{target}'; free space and rerun"
    if isinstance(error, OSError) and error.strerror:
        return (
            f"cannot write '{target}' ({error.strerror.lower()}); check that the folder is "
            "writable and has space, then rerun"
        )
    reason = str(error) if isinstance(error, Unverified) else _first_line(error)
    return f"'{target}' was not written correctly ({reason}); check the disk and rerun"


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; some file systems refuse fsync on folders, which is fine."""
    with contextlib.suppress(OSError):
        _fsync(folder)


def check_nonempty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise Unverified("it is empty")


def check_gzip(path: Path) -> None:
    """Decompress the whole stream: a truncated file fails its length and CRC check."""
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 20):
                pass
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise Unverified(f"its compressed stream is broken: {error}") from None


def _check_nifti_voxels(path: Path) -> None:
    """Every voxel the header promises is in the file (SimpleITK zero-fills missing ones)."""
    import nibabel
    import numpy as np

    try:
        np.asarray(nibabel.load(path).dataobj)
    except (ValueError, OSError, EOFError, nibabel.filebasedimages.ImageFileError) as error:
        raise Unverified(f"it does not hold every voxel its header promises: {error}") from None


def _read_back_image(path: Path) -> sitk.Image:
    """The image in ``path``; SimpleITK reads a truncated NIfTI without a word, hence the checks."""
    import SimpleITK as sitk

    check_nonempty(path)
    if path.name.endswith(".gz"):
        check_gzip(path)
    if path.name.endswith((".nii", ".nii.gz")):
        _check_nifti_voxels(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise Unverified(f"it cannot be read back as an image: {_first_line(error)}") from None


def check_image(path: Path) -> None:
    _read_back_image(path)


def check_zip(path: Path) -> None:
    """Every record's CRC: ``torch.save`` writes a zip archive."""
    check_nonempty(path)
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise Unverified(f"it is not a complete archive: {error}") from None
    if broken is not None:
        raise Unverified(f"its record '{broken}' fails its CRC check")


def check_png(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    check_nonempty(path)
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise Unverified(f"it is not a complete PNG: {error}") from None


def check_npy(path: Path) -> None:
    """The header's shape and dtype must match the file's size."""
    import numpy as np

    try:
        np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise Unverified(f"it is not a complete array: {error}") from None


def check_json(path: Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise Unverified(f"it is not valid JSON: {error}") from None


def verifier_for(path: Path) -> Verifier:
    """The read-back check for a file of ``path``'s kind; at least: it is not empty."""
    name = path.name
    if name.endswith(IMAGE_SUFFIXES):
        return check_image
    suffix = path.suffix
    if suffix in {".pt", ".zip"}:
        return check_zip
    if suffix == ".png":
        return check_png
    if suffix == ".npy":
        return check_npy
    if suffix == ".json":
        return check_json
    return check_nonempty


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], verify: Verifier | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; verify it and rename it to ``path`` on success.

    ``verify`` (default: :func:`verifier_for` the target) raises :class:`Unverified` if the
    temporary does not read back whole. A failed write, a failed check or a full disk
    raises :class:`WriteError` and leaves nothing under either name.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=f".tmp{_suffixes(target)}", dir=target.parent
        )
    except OSError as error:
        raise WriteError(describe_write_failure(target, error)) from None
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        _fsync(temporary_path)
        (verify or verifier_for(target))(temporary_path)
        # mkstemp creates the file private (0600); give it the mode a plain open() would.
        os.chmod(temporary_path, 0o666 & ~_UMASK)
        os.replace(temporary_path, target)
        _fsync_folder(target.parent)
    except (OSError, RuntimeError, Unverified) as error:
        # torch's and SimpleITK's writers raise RuntimeError; both are write failures here.
        raise WriteError(describe_write_failure(target, error)) from None
    finally:
        temporary_path.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries that :func:`atomic_path` left beside ``path`` when killed.

    A SIGKILL during a write skips the cleanup, leaving a hidden file as large as the output
    (a checkpoint). Call it only where no other process writes ``path`` at the same time:
    the Snakemake job that owns the output.
    """
    target = Path(path)
    if not target.parent.is_dir():
        return []
    pattern = f".{target.name}.*.tmp{_suffixes(target)}"
    stale = sorted(target.parent.glob(pattern))
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return stale


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` as UTF-8; it must read back byte for byte."""
    data = text.encode("utf-8")

    def reads_back(temporary: Path) -> None:
        if temporary.read_bytes() != data:
            raise Unverified("it reads back different from what was written")

    with atomic_path(path, verify=reads_back) as temporary:
        temporary.write_bytes(data)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[list[str]]:
    """Collect what C libraries print on file descriptor 2 (SimpleITK's NIfTI writer)."""
    captured: list[str] = []
    try:
        sink = tempfile.TemporaryFile()
    except OSError:  # nowhere to put it: let it through
        yield captured
        return
    with sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace").strip())


def write_image(image: sitk.Image, path: str | os.PathLike[str], compress: bool = True) -> None:
    """Write ``image`` with SimpleITK and check that it reads back voxel for voxel.

    What the writer prints is held back and passed on only if the file reads back whole;
    otherwise the :class:`WriteError` line says what went wrong.
    """
    import numpy as np
    import SimpleITK as sitk

    expected = sitk.GetArrayViewFromImage(image)

    def reads_back(temporary: Path) -> None:
        back = _read_back_image(temporary)
        same_grid = (
            back.GetSize() == image.GetSize()
            and np.allclose(back.GetSpacing(), image.GetSpacing())
            and np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
            and np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
        )
        if not same_grid or not np.array_equal(sitk.GetArrayViewFromImage(back), expected):
            raise Unverified("it reads back different from the image written")

    with atomic_path(path, verify=reads_back) as temporary, _native_stderr_captured() as said:
        sitk.WriteImage(image, str(temporary), compress)
    if said and said[0]:
        print(said[0], file=sys.stderr)
