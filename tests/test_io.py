"""Atomic writes: a failed write leaves nothing under the final name; a finished one is
readable like any file the user creates."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from deeprs.io import atomic_path, read_json, remove_stale_temporaries, write_json


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_finished_write_is_renamed_with_the_default_mode(tmp_path: Path) -> None:
    target = tmp_path / "case.nii.gz"
    with atomic_path(target) as temporary:
        assert temporary.name.endswith(".nii.gz") and temporary.parent == tmp_path
        temporary.write_bytes(b"data")
    assert target.read_bytes() == b"data"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_json_round_trip(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"fold": 1, "test": ["x"]})
    assert read_json(tmp_path / "a.json") == {"fold": 1, "test": ["x"]}


def test_stale_temporaries_of_one_output_are_removed(tmp_path: Path) -> None:
    """What a SIGKILL mid-write leaves: only the temporaries of the named output go."""
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"complete")
    leftovers = [tmp_path / ".checkpoint.pt.k2j4x.tmp.pt", tmp_path / ".checkpoint.pt.a1.tmp.pt"]
    others = [tmp_path / ".model.pt.k2j4x.tmp.pt", tmp_path / "checkpoint.pt.tmp.pt"]
    for path in leftovers + others:
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(target) == sorted(leftovers)
    assert target.read_bytes() == b"complete"
    assert all(path.exists() for path in others)
    assert not any(path.exists() for path in leftovers)
    assert remove_stale_temporaries(tmp_path / "absent" / "model.pt") == []
