"""Atomic writes and small file helpers shared by every step.

Every output goes through :func:`atomic_path`: it is written under a temporary name in
the same folder and renamed into place only when complete, so an interrupted job never
leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _suffixes(path: Path) -> str:
    """`.nii.gz` for `a.nii.gz`: writers such as SimpleITK pick the format from it."""
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{_suffixes(target)}", dir=target.parent
    )
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        # mkstemp creates the file private (0600); give it the mode a plain open() would.
        os.chmod(temporary_path, 0o666 & ~_UMASK)
        os.replace(temporary_path, target)
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
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path) as handle:
        return json.load(handle)
