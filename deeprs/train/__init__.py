"""Training: the one joint trainer, its update steps, data order, checkpoints and CLI."""

from __future__ import annotations

from deeprs.train.checkpoint import load_models
from deeprs.train.trainer import TrainResult, TrainSettings, train

__all__ = ["TrainResult", "TrainSettings", "load_models", "train"]
