"""Checkpoints while training and the final ``model.pt`` (format in docs/architecture.md).

Each network is stored with the ``kind`` and constructor arguments that rebuild it
(``deeprs.nets.build_network(kind, **args)``), so a model file is readable without
knowing which method or width produced it. Files are written under a temporary name and
renamed, so a job killed while saving leaves the previous checkpoint intact, and a damaged
checkpoint is set aside rather than blocking the rerun (:func:`read_checkpoint`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeprs.errors import DataError
from deeprs.inference.model import MODEL_KEYS, build_networks
from deeprs.io import atomic_path

LOG = logging.getLogger(__name__)


def network_record(kind: str, network: nn.Module) -> dict[str, Any]:
    """What rebuilds ``network``: its kind, constructor arguments and weights."""
    state = {name: tensor.detach().cpu() for name, tensor in network.state_dict().items()}
    return {"kind": kind, "args": dict(network.config), "state_dict": state}


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` under a temporary name, then rename it to ``path``.

    Saved through a file handle: given a path, ``torch.save`` names the records inside the
    zip after the (random) temporary file, so two identical runs would differ in bytes.
    """
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        torch.save(payload, handle)


class _Unreadable(Exception):
    """A file torch cannot read back as a dictionary; the message says why."""


def _load(path: Path) -> dict[str, Any]:
    """``torch.load`` restricted to tensors and plain containers (no pickled code)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises several types for a damaged file
        raise _Unreadable(f"cannot be read ({type(error).__name__})") from None
    if not isinstance(payload, dict):
        raise _Unreadable("does not hold a dictionary")
    return payload


def read_payload(path: Path, what: str) -> dict[str, Any]:
    """The dictionary in ``path``; a missing or damaged file is one DataError line."""
    try:
        return _load(path)
    except FileNotFoundError:
        raise DataError(f"{what} '{path}' does not exist; run the training step first") from None
    except _Unreadable as error:
        raise DataError(f"{what} '{path}' {error}; delete it and rerun the training step") from None


def _set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.corrupt-<UTC time>`` (never over an earlier one)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    number = 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{number}")
    os.replace(path, aside)
    return aside


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The training state saved in ``path``, or None when there is none to resume from.

    Our own writes are verified before they are renamed into place, but a checkpoint can
    still be damaged afterwards (a disk fault, a partial copy). Such a file must not block
    every rerun: it is kept under ``checkpoint.pt.corrupt-<UTC time>`` for inspection, a
    warning says so, and training starts from scratch.
    """
    try:
        return _load(path)
    except FileNotFoundError:
        return None
    except _Unreadable as error:
        aside = _set_aside(path)
        LOG.warning(
            "checkpoint '%s' %s; kept it as '%s' and training starts from scratch",
            path,
            error,
            aside.name,
        )
        return None


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
    return build_networks(payload.get("models"), torch.device(device), path, MODEL_KEYS)


def load_model_info(path: str | Path) -> dict[str, Any]:
    """``method``, ``labels`` and ``iteration`` of a ``model.pt`` without building networks."""
    payload = read_payload(Path(path), "model file")
    return {key: payload.get(key) for key in ("method", "labels", "iteration")}
