"""model.pt and checkpoints, padding, the seeded data order, manual augmentation, devices."""

from __future__ import annotations

import errno
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import scipy.ndimage
import torch

from deeprs import device as device_module
from deeprs.device import autocast, select_device, uses_mixed_precision
from deeprs.errors import ConfigError, DataError, WriteError
from deeprs.nets import build_network
from deeprs.train import checkpoint as ckpt
from deeprs.train.augment import augment_pair, rotate, rotation_theta
from deeprs.train.sampling import EpochSampler, crop_to_shape, pad_to_multiple, training_pairs


def _networks() -> dict[str, tuple[str, torch.nn.Module]]:
    torch.manual_seed(0)
    return {
        "registration": ("voxelmorph2", build_network("voxelmorph2", width=0.25)),
        "segmentation": ("vnet", build_network("vnet", in_channels=1, out_channels=3, width=0.25)),
        "discriminator": ("discriminator", build_network("discriminator", width=0.25)),
    }


def test_model_file_rebuilds_every_network_with_the_same_outputs(tmp_path: Path) -> None:
    networks = _networks()
    path = tmp_path / "model.pt"
    ckpt.save_model(path, "deeprs", networks, {"lv": 1, "rv": 2}, 12)
    loaded = ckpt.load_models(path, "cpu")
    assert set(loaded) == set(networks)
    assert ckpt.load_model_info(path) == {
        "method": "deeprs",
        "labels": {"lv": 1, "rv": 2},
        "iteration": 12,
    }
    image, fixed = torch.rand(1, 1, 16, 16, 32), torch.rand(1, 1, 16, 16, 32)
    with torch.no_grad():
        for key, (_, original) in networks.items():
            original.eval()
            rebuilt = loaded[key]
            assert not rebuilt.training
            assert type(rebuilt) is type(original) and rebuilt.config == original.config
            inputs = (image,) if key == "segmentation" else (image, fixed)
            assert torch.equal(original(*inputs), rebuilt(*inputs))


def test_model_file_layout_matches_the_architecture_contract(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    ckpt.save_model(path, "unet3d", {"segmentation": _networks()["segmentation"]}, {"lv": 1}, 3)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"method", "models", "labels", "iteration"}
    record = payload["models"]["segmentation"]
    assert set(record) == {"kind", "args", "state_dict"}
    assert record["kind"] == "vnet" and record["args"]["out_channels"] == 3


def test_missing_and_damaged_model_files_are_one_sentence_errors(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pt"
    with pytest.raises(
        DataError, match=r"^model file '.*absent.pt' does not exist; run the training step first$"
    ):
        ckpt.load_models(missing)
    damaged = tmp_path / "model.pt"
    damaged.write_bytes(b"not a torch file")
    with pytest.raises(
        DataError,
        match=r"^model file '.*model.pt' cannot be read .*; delete it and rerun the training step$",
    ):
        ckpt.load_models(damaged)
    torch.save({"models": {"registrator": {}}}, damaged)
    with pytest.raises(DataError, match="has no valid 'models' entry"):
        ckpt.load_models(damaged)


def test_a_failed_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.pt"
    ckpt.save_atomic({"iteration": 2}, path)

    def crash(payload: object, handle: BinaryIO) -> None:
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(WriteError, match=f"no space left on device while writing '{path}'"):
        ckpt.save_atomic({"iteration": 4}, path)
    monkeypatch.undo()
    assert ckpt.read_payload(path, "checkpoint") == {"iteration": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_padding_to_a_multiple_of_16_and_cropping_back() -> None:
    volume = np.arange(10 * 20 * 33, dtype=np.float32).reshape(10, 20, 33)
    padded = pad_to_multiple(volume)
    assert padded.shape == (16, 32, 48)
    assert np.array_equal(padded[:10, :20, :33], volume)
    assert np.array_equal(padded[15, 19, 40], volume[9, 19, 32])  # edge-replicated
    labels = pad_to_multiple(np.ones((10, 16, 16), np.uint8), mode="constant")
    assert labels.shape == (16, 16, 16) and labels[10:].sum() == 0
    assert pad_to_multiple(volume[:, :16, :32], 16).shape == (16, 16, 32)
    cropped = crop_to_shape(torch.from_numpy(padded)[None, None], (10, 20, 33))
    assert torch.equal(cropped[0, 0], torch.from_numpy(volume))


def test_epoch_sampler_visits_every_pair_once_per_epoch_reproducibly() -> None:
    pairs = training_pairs(["a", "b", "c"], ["c", "d"])
    assert ("c", "c") not in pairs and len(pairs) == 5
    sampler = EpochSampler(pairs, seed=3)
    first = [sampler.item(i) for i in range(10)]
    assert sorted(first[:5]) == sorted(pairs) and sorted(first[5:]) == sorted(pairs)
    fresh = EpochSampler(pairs, seed=3)
    assert [fresh.item(i) for i in (7, 2, 9)] == [first[7], first[2], first[9]]
    assert [EpochSampler(pairs, seed=4).item(i) for i in range(5)] != first[:5]


def _scipy_rotation(
    volume: np.ndarray,
    angles_xyz: tuple[float, float, float],
    spacing_zyx: tuple[float, float, float],
) -> np.ndarray:
    """Independent reference: scipy's affine_transform with the rotation written in mm, zyx order."""

    def about(axis: int, angle: float) -> np.ndarray:  # in (x, y, z)
        c, s = math.cos(angle), math.sin(angle)
        first, second = [a for a in range(3) if a != axis]
        m = np.eye(3)
        m[first, first], m[first, second], m[second, first], m[second, second] = c, -s, s, c
        return m

    rotation_xyz = about(2, angles_xyz[2]) @ about(1, angles_xyz[1]) @ about(0, angles_xyz[0])
    flip = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    rotation_zyx = flip @ rotation_xyz @ flip
    scale = np.diag(spacing_zyx)
    matrix = np.linalg.inv(scale) @ rotation_zyx @ scale  # output voxel -> input voxel offsets
    centre = (np.array(volume.shape) - 1) / 2
    return scipy.ndimage.affine_transform(
        volume, matrix, offset=centre - matrix @ centre, order=1, mode="nearest"
    )


def test_rotation_matches_scipy_in_millimetres() -> None:
    rng = np.random.default_rng(0)
    volume = scipy.ndimage.gaussian_filter(rng.random((12, 20, 24)), 2).astype(np.float32)
    angles = (math.radians(8), math.radians(-5), math.radians(10))
    spacing = (2.5, 1.0, 1.2)
    theta = rotation_theta(angles, volume.shape, spacing)
    ours = rotate(torch.from_numpy(volume)[None, None], theta, mode="bilinear")[0, 0].numpy()
    reference = _scipy_rotation(volume, angles, spacing)
    inner = (slice(2, -2), slice(3, -3), slice(3, -3))
    assert np.abs(ours[inner] - reference[inner]).max() < 1e-4
    assert np.abs(ours[inner] - volume[inner]).max() > 1e-2  # it did rotate


def test_augmentation_is_seeded_and_keeps_image_and_label_together() -> None:
    image = torch.zeros(1, 1, 16, 16, 16)
    image[..., 4:9, 3:8, 2:12] = 1.0
    label = (image > 0.5).long() * 2
    first = augment_pair(image, label, torch.Generator().manual_seed(1), (1.0, 1.0, 1.0))
    second = augment_pair(image, label, torch.Generator().manual_seed(1), (1.0, 1.0, 1.0))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    augmented_image, augmented_label = first
    assert augmented_label.dtype == torch.int64 and set(augmented_label.unique().tolist()) <= {0, 2}
    inside = augmented_image[augmented_label == 2]
    outside = augmented_image[augmented_label == 0]
    assert inside.mean() > 0.8 and outside.mean() < 0.1
    angles = torch.zeros(3)
    identity = rotation_theta(tuple(angles.tolist()), (16, 16, 16), (1.0, 2.0, 3.0))
    assert torch.allclose(rotate(image, identity, "bilinear"), image, atol=1e-6)


def test_device_selection() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(
            ConfigError, match="asks for 'cuda' but this machine has no such device"
        ):
            select_device("cuda")
    with pytest.raises(ConfigError, match="'tpu' is not one of auto, cpu, cuda, mps"):
        select_device("tpu")
    cpu = torch.device("cpu")
    assert uses_mixed_precision(torch.device("cuda")) and not uses_mixed_precision(cpu)
    with autocast(cpu):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_is_used_only_where_the_cpu_has_bf16_instructions(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Emulated bf16 is slower than float32 through oneDNN (deeprs.device.cpu_has_native_bf16)."""
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert uses_mixed_precision(cpu, cpu_bf16=True) is native
    assert not uses_mixed_precision(cpu, cpu_bf16=False)
    with autocast(cpu, cpu_bf16=True):
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == (torch.bfloat16 if native else torch.float32)


def _handedness(label: torch.Tensor) -> float:
    """Sign of the triple product of the arms 1, 2, 3 seen from the hub 4 (a chiral marker)."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"))
    hub = grid[:, label[0, 0] == 4].mean(1)
    arms = [grid[:, label[0, 0] == k].mean(1) - hub for k in (1, 2, 3)]
    return float(torch.sign(torch.linalg.det(torch.stack(arms))))


@pytest.mark.parametrize("reflections", ["paired", "none", "independent"])
def test_augmentation_never_mirrors_a_heart_unless_asked(reflections: str) -> None:
    """A single reflection turns a chiral object into its mirror image; rotations and the
    paired mirroring + flipping (a 180 degree rotation) do not."""
    label = torch.zeros(1, 1, 16, 16, 16, dtype=torch.int64)
    label[..., 7:9, 7:9, 7:9] = 4
    label[..., 7:9, 7:9, 11:14] = 1  # x arm
    label[..., 7:9, 11:13, 7:9] = 2  # y arm
    label[..., 11:12, 7:9, 7:9] = 3  # z arm
    image = label.float()
    original = _handedness(label)
    handedness, moved_x_arm = [], []
    for seed in range(24):
        generator = torch.Generator().manual_seed(seed)
        _, augmented = augment_pair(image, label, generator, (1.0, 1.0, 1.0), reflections)
        if reflections == "none":  # the default: rotation alone
            _, default = augment_pair(image, label, torch.Generator().manual_seed(seed), (1, 1, 1))
            assert torch.equal(default, augmented)
        assert set(augmented.unique().tolist()) == {0, 1, 2, 3, 4}
        handedness.append(_handedness(augmented))
        x_arm = torch.nonzero(augmented[0, 0] == 1).float().mean(0)
        moved_x_arm.append(bool(x_arm[2] < 7.5))
    if reflections == "independent":
        assert -original in handedness  # the literal reading makes mirrored hearts
    else:
        assert handedness == [original] * 24
    assert any(moved_x_arm) == (reflections != "none")  # paired does reflect, both axes


def test_augmentation_rejects_an_unknown_reflection_mode() -> None:
    image = torch.zeros(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="reflections must be one of"):
        augment_pair(image, image.long(), torch.Generator(), (1.0, 1.0, 1.0), "mirror")
