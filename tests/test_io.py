"""Verified atomic writes: a failed write leaves nothing under the final name; a file that does
not read back whole is never renamed into place; a finished one is readable like any file
the user creates. (A really full disk: tests/test_reliability_disk.py.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from matplotlib import pyplot as plt

from deeprs.errors import WriteError
from deeprs.io import (
    atomic_path,
    read_json,
    remove_stale_temporaries,
    write_image,
    write_json,
    write_text,
)


class Killed(Exception):
    pass


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(Killed), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise Killed
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_finished_write_is_renamed_with_the_default_mode(tmp_path: Path) -> None:
    target = tmp_path / "case.nii.gz"
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    with atomic_path(target) as temporary:
        assert temporary.name.endswith(".nii.gz") and temporary.parent == tmp_path
        sitk.WriteImage(image, str(temporary), True)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target))).tolist() == (
        sitk.GetArrayFromImage(image).tolist()
    )
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


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _write_truncated(target: Path, write) -> str:
    """What a writer that hits a full disk and says nothing leaves: half the file."""
    with pytest.raises(WriteError) as raised, atomic_path(target) as temporary:
        write(temporary)
        _cut_in_half(temporary)
    assert not target.exists() and list(target.parent.iterdir()) == []
    return str(raised.value)


def test_truncated_files_of_every_kind_are_refused(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 9, 10), dtype=np.float32))
    figure = plt.figure(figsize=(2, 2))
    writers = {
        "case.nii.gz": lambda path: sitk.WriteImage(image, str(path), True),
        "case.nii": lambda path: sitk.WriteImage(image, str(path), False),
        "checkpoint.pt": lambda path: torch.save({"w": torch.arange(5000.0)}, path),
        "figure.png": lambda path: figure.savefig(path, format="png"),
        "image.npy": lambda path: np.save(path, np.zeros((50, 50))),
        "split.json": lambda path: path.write_text('{"test": ["a", "b"]}'),
    }
    for name, write in writers.items():
        folder = tmp_path / name.replace(".", "_")
        message = _write_truncated(folder / name, write)
        assert message.startswith(f"'{folder / name}' was not written correctly ("), message
        assert message.endswith("); check the disk and rerun"), message
    plt.close(figure)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match="it is empty"), atomic_path(tmp_path / "t.csv") as temp:
        temp.write_text("")


def test_an_oserror_while_writing_names_the_file_and_the_cause(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    with pytest.raises(WriteError) as raised, atomic_path(target):
        raise OSError(28, "No space left on device")
    assert str(raised.value) == (
        f"no space left on device while writing '{target}'; free space and rerun"
    )


def test_write_image_compares_the_voxels_it_reads_back(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    image.SetSpacing((1.5, 2.0, 3.0))
    image.SetOrigin((-5.0, 4.0, 2.5))
    write_image(image, tmp_path / "a.nii.gz")
    back = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    assert back.GetSpacing() == image.GetSpacing() and back.GetOrigin() == image.GetOrigin()
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_text_reads_back_byte_for_byte_in_utf8(tmp_path: Path) -> None:
    write_text(tmp_path / "ids.csv", "case\npätient 001_frame01\n")
    assert (tmp_path / "ids.csv").read_bytes() == "case\npätient 001_frame01\n".encode()
