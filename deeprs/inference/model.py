"""The networks of a trained method, read from a ``model.pt`` or a bundle.

Both files store each network as a record ``{"kind", "args", "state_dict"}`` (written by
training, format in docs/architecture.md), so one reader rebuilds either. Only what
inference uses is built: the discriminator judges warps during training and is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeprs.errors import DataError
from deeprs.nets import build_network
from deeprs.nets.padding import NETWORK_MULTIPLE

INFERENCE_KEYS = ("registration", "segmentation")
MODEL_KEYS = (*INFERENCE_KEYS, "discriminator")


@dataclass
class TrainedModel:
    """A method's inference networks in eval mode; ``labels`` maps structure -> class index."""

    method: str
    labels: dict[str, int]
    networks: dict[str, nn.Module]
    iteration: int

    @property
    def registration(self) -> nn.Module | None:
        return self.networks.get("registration")

    @property
    def segmentation(self) -> nn.Module | None:
        return self.networks.get("segmentation")

    @property
    def multiple(self) -> int:
        """The size every input is padded to a multiple of (the most any network needs)."""
        divisors = [getattr(net, "size_divisor", 1) for net in self.networks.values()]
        return max([NETWORK_MULTIPLE, *divisors])


def read_torch_file(path: str | Path, what: str, remedy: str) -> dict[str, Any]:
    """``torch.load`` of tensors and plain containers only (no pickled code)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{what} '{path}' does not exist; {remedy}") from None
    except Exception as error:  # torch raises several types for a damaged file
        raise DataError(
            f"{what} '{path}' cannot be read ({type(error).__name__}); {remedy}"
        ) from None
    if not isinstance(payload, dict):
        raise DataError(f"{what} '{path}' does not hold a dictionary; {remedy}")
    return payload


def network_from_record(record: dict[str, Any], device: torch.device) -> nn.Module:
    """Rebuild one network from its ``{"kind", "args", "state_dict"}`` record, on ``device``."""
    network = build_network(record["kind"], **record["args"])
    network.load_state_dict(record["state_dict"])
    return network.to(device)


def build_networks(
    records: Any,
    device: torch.device,
    source: str | Path,
    keys: tuple[str, ...] = INFERENCE_KEYS,
) -> dict[str, nn.Module]:
    """The networks among ``keys`` of a ``models`` entry, in eval mode (inference needs R
    and S; training's own reader also takes D)."""
    if not isinstance(records, dict) or not set(records) <= set(MODEL_KEYS):
        raise DataError(
            f"'{source}' has no valid 'models' entry (keys must be among "
            f"{', '.join(MODEL_KEYS)}); rerun the training step"
        )
    return {key: network_from_record(records[key], device).eval() for key in keys if key in records}


def model_from_payload(
    payload: dict[str, Any], device: torch.device, source: str | Path
) -> TrainedModel:
    """The :class:`TrainedModel` of a ``model.pt`` or bundle payload."""
    for key, kind in (("method", str), ("labels", dict)):
        if not isinstance(payload.get(key), kind):
            raise DataError(f"'{source}' has no '{key}' entry; rerun the training step")
    return TrainedModel(
        method=payload["method"],
        labels=dict(payload["labels"]),
        networks=build_networks(payload.get("models"), device, source),
        iteration=int(payload.get("iteration", 0)),
    )


def load_model_file(path: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """The networks of a training step's ``model.pt``."""
    payload = read_torch_file(path, "model file", "delete it and rerun the training step")
    return model_from_payload(payload, torch.device(device), path)
