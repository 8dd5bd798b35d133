"""Checkpoints while training and the final ``model.pt`` (format in docs/architecture.md).

Each network is stored with the ``kind`` and constructor arguments that rebuild it
(``deeprs.nets.build_network(kind, **args)``), so a model file is readable without
knowing which method or width produced it. Files are written under a temporary name and
renamed, so a job killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeprs.errors import DataError
from deeprs.io import atomic_path

MODEL_KEYS = ("registration", "segmentation", "discriminator")


def network_record(kind: str, network: nn.Module) -> dict[str, Any]:
    """What rebuilds ``network``: its kind, constructor arguments and weights."""
    state = {name: tensor.detach().cpu() for name, tensor in network.state_dict().items()}
    return {"kind": kind, "args": dict(network.config), "state_dict": state}


def build_from_record(record: dict[str, Any], device: torch.device) -> nn.Module:
    """Rebuild a network from :func:`network_record` output, on ``device``."""
    from deeprs.nets import build_network

    network = build_network(record["kind"], **record["args"])
    network.load_state_dict(record["state_dict"])
    return network.to(device)


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` under a temporary name, then rename it to ``path``.

    Saved through a file handle: given a path, ``torch.save`` names the records inside the
    zip after the (random) temporary file, so two identical runs would differ in bytes.
    """
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        torch.save(payload, handle)


def read_payload(path: Path, what: str) -> dict[str, Any]:
    """``torch.load`` restricted to tensors and plain containers (no pickled code)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{what} '{path}' does not exist; run the training step first") from None
    except Exception as error:  # torch raises several types for a damaged file
        raise DataError(
            f"{what} '{path}' cannot be read ({type(error).__name__}); delete it and "
            "rerun the training step"
        ) from None
    if not isinstance(payload, dict):
        raise DataError(f"{what} '{path}' does not hold a dictionary; rerun the training step")
    return payload


def save_model(
    path: Path,
    method: str,
    networks: dict[str, tuple[str, nn.Module]],
    labels: dict[str, int],
    iteration: int,
) -> None:
    """Write ``model.pt``: ``networks`` maps a key of MODEL_KEYS to ``(kind, network)``."""
    payload = {
        "method": method,
        "models": {key: network_record(kind, net) for key, (kind, net) in networks.items()},
        "labels": dict(labels),
        "iteration": iteration,
    }
    save_atomic(payload, path)


def load_models(path: str | Path, device: torch.device | str = "cpu") -> dict[str, nn.Module]:
    """The networks of a ``model.pt`` in eval mode, keyed ``registration``/``segmentation``/
    ``discriminator`` (only those the method trains; empty for ``affine``)."""
    path = Path(path)
    payload = read_payload(path, "model file")
    models = payload.get("models")
    if not isinstance(models, dict) or not set(models) <= set(MODEL_KEYS):
        raise DataError(
            f"model file '{path}' has no valid 'models' entry (keys must be among "
            f"{', '.join(MODEL_KEYS)}); rerun the training step"
        )
    loaded = {
        key: build_from_record(record, torch.device(device)) for key, record in models.items()
    }
    for network in loaded.values():
        network.eval()
    return loaded


def load_model_info(path: str | Path) -> dict[str, Any]:
    """``method``, ``labels`` and ``iteration`` of a ``model.pt`` without building networks."""
    payload = read_payload(Path(path), "model file")
    return {key: payload.get(key) for key in ("method", "labels", "iteration")}
