"""The one training loop: every method of :mod:`deeprs.methods` is a configuration of it.

Per iteration (batch 1, alternating as in section 3.2 of the paper): an R update on a
(moving, fixed) pair, a D update on the same pair and the detached warp, then an S update
on R's augmentation and weakly supervised data. Segmentation-only methods skip R and D and
train S on one labelled image. Every ``checkpoint_every`` iterations the whole state
(networks, optimisers, random generator, loss history) is saved atomically; a rerun
resumes from it and ends with exactly the weights of an uninterrupted run (on the CPU).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from deeprs import perf
from deeprs.data.cases import Manifest, Split
from deeprs.device import set_threads
from deeprs.errors import DeeprsError
from deeprs.io import remove_stale_temporaries
from deeprs.methods import MethodSpec
from deeprs.nets import build_network
from deeprs.train import checkpoint as ckpt
from deeprs.train.augment import augment_pair
from deeprs.train.history import empty_row, plot_losses, write_losses_csv
from deeprs.train.sampling import (
    NETWORK_MULTIPLE,
    EpochSampler,
    TrainingData,
    load_training_data,
    training_pairs,
)
from deeprs.train.steps import (
    Networks,
    NonFiniteLossError,
    Pair,
    StepContext,
    discriminator_step,
    registration_step,
    segmentation_step,
)

LOG = logging.getLogger(__name__)

DEFAULT_WEIGHTS = {"adv": 1.0, "drc": 10.0, "cc": 1.0, "smooth": 1.0, "acm": 1.0, "ce": 1.0}
"""The paper's lambdas (section 4.1)."""

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
LOSSES_CSV = "losses.csv"
LOSSES_PNG = "losses.png"

RMSPROP_ALPHA = 0.9
"""Keras' RMSprop decay (rho), the paper's framework; torch's default is 0.99."""


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of one training run (config section ``train``)."""

    iterations: int = 1500
    width: float = 1.0
    lr: float = 2e-4
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    checkpoint_every: int = 100
    seed: int = 2020
    threads: int = 1
    cpu_bf16: bool = True
    discriminator_lr: float | None = None

    @property
    def lr_discriminator(self) -> float:
        """D's learning rate: ``discriminator_lr`` when set, else the shared ``lr``."""
        return self.lr if self.discriminator_lr is None else self.discriminator_lr

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise DeeprsError(
                f"config key 'train.weights' has unknown terms {sorted(unknown)}; "
                f"use {', '.join(DEFAULT_WEIGHTS)}"
            )
        object.__setattr__(self, "weights", {**DEFAULT_WEIGHTS, **self.weights})
        if self.iterations < 1 or self.checkpoint_every < 1:
            raise DeeprsError(
                "config keys 'train.iterations' and 'train.checkpoint_every' must be >= 1"
            )

    def resume_key(self) -> dict[str, Any]:
        """The settings a checkpoint must share to be resumed (not the run length or threads)."""
        return {
            "width": self.width,
            "lr": self.lr,
            "weights": dict(self.weights),
            "seed": self.seed,
            "cpu_bf16": self.cpu_bf16,
            "discriminator_lr": self.lr_discriminator,
        }


@dataclass
class TrainResult:
    model_path: Path
    losses_csv: Path
    losses_png: Path
    iterations: int
    resumed_from: int
    seconds: float

    @property
    def seconds_per_iteration(self) -> float:
        trained = self.iterations - self.resumed_from
        return self.seconds / trained if trained else 0.0


IterationCallback = Callable[[int, dict[str, float]], None]


def build_networks(
    method: MethodSpec, num_classes: int, settings: TrainSettings, device: torch.device
) -> tuple[Networks, dict[str, tuple[str, nn.Module]]]:
    """The method's networks and optimisers as in the paper.

    Each network is initialised from the seed alone, not from what was built before it, so
    that every method starts from the same R and the same S (a controlled comparison:
    DeepRS's S begins where the 3D U-Net's does).
    """

    def seeded(kind: str, **args: object) -> nn.Module:
        torch.manual_seed(settings.seed)
        return build_network(kind, width=settings.width, **args)

    kinds: dict[str, tuple[str, nn.Module]] = {}
    if method.registration:
        kinds["registration"] = ("voxelmorph2", seeded("voxelmorph2"))
    if method.segmentation:
        kind = method.segmentation_kind
        net = seeded(kind, in_channels=1, out_channels=num_classes)
        kinds["segmentation"] = (kind, net)
    if method.discriminator:
        kinds["discriminator"] = ("discriminator", seeded("discriminator"))
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for key, (_, net) in kinds.items():
        net.to(device).train()
        if key == "segmentation":
            optimizers[key] = torch.optim.Adam(net.parameters(), lr=settings.lr)
        else:
            lr = settings.lr_discriminator if key == "discriminator" else settings.lr
            optimizers[key] = torch.optim.RMSprop(net.parameters(), lr=lr, alpha=RMSPROP_ALPHA)
    networks = Networks(
        registration=kinds.get("registration", (None, None))[1],
        segmentation=kinds.get("segmentation", (None, None))[1],
        discriminator=kinds.get("discriminator", (None, None))[1],
        optimizers=optimizers,
    )
    return networks, kinds


def active_updates(method: MethodSpec, iteration: int, iterations: int) -> tuple[bool, bool]:
    """Whether R (with D) and S are updated at ``iteration``.

    Methods with a pre-training fraction (DeepAtlas) first train S alone; after that, and
    for every other method, each iteration updates R (S frozen), then D, then S (R frozen).
    """
    if iteration < pretraining_iterations(method, iterations):
        return False, True
    return method.registration, method.segmentation


def pretraining_iterations(method: MethodSpec, iterations: int) -> int:
    """Iterations in which S trains alone on the labelled images before R starts."""
    return int(method.segmentation_pretrain_fraction * iterations)


def _pair(data: TrainingData, moving: str, fixed: str) -> Pair:
    return Pair(
        moving=data.images[moving],
        moving_label=data.labels[moving],
        fixed=data.images[fixed],
        fixed_label=data.labels.get(fixed),
    )


class _Run:
    """State of one training run: what a checkpoint holds and one iteration's work."""

    def __init__(
        self,
        method: MethodSpec,
        manifest: Manifest,
        split: Split,
        settings: TrainSettings,
        device: torch.device,
    ) -> None:
        self.method = method
        self.settings = settings
        self.device = device
        num_classes = len(manifest.labels) + 1
        self.networks, self.kinds = build_networks(method, num_classes, settings, device)
        multiple = max(getattr(net, "size_divisor", 1) for _, net in self.kinds.values())
        self.data = load_training_data(
            manifest,
            split,
            device,
            labelled_fixed=method.label_constraint,
            multiple=max(NETWORK_MULTIPLE, multiple),
        )
        # channels_last_3d weights and volumes: 1.4x on the joint step (deeprs bench).
        layout = perf.default_options(device)
        perf.prepare_networks([net for _, net in self.kinds.values()], layout, self.data.shape)
        self.data.images = {
            case: perf.prepare_volume(image, layout) for case, image in self.data.images.items()
        }
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.context = StepContext(
            method=method,
            weights=settings.weights,
            num_classes=num_classes,
            device=device,
            generator=self.generator,
            base_lr=settings.lr_discriminator,
            cpu_bf16=settings.cpu_bf16,
        )
        self.spacing_zyx = manifest.spacing_zyx
        self.pairs = (
            EpochSampler(training_pairs(self.data.moving_ids, self.data.fixed_ids), settings.seed)
            if method.registration
            else None
        )
        self.labelled = EpochSampler(self.data.moving_ids, settings.seed)
        self.history: list[dict[str, float]] = []
        self.identity = {
            "method": method.name,
            "settings": settings.resume_key(),
            "split": split.to_json(),
            "shape": list(self.data.shape),
        }

    def iterate(self, iteration: int) -> dict[str, float]:
        row = empty_row(iteration)
        if self.method.supervised_only:
            case = self.labelled.item(iteration)
            image, label = self.data.images[case], self.data.labels[case]
            if self.method.manual_augmentation:
                image, label = augment_pair(image, label, self.generator, self.spacing_zyx)
            # S alone sees one labelled image; it stands in both roles of the pair.
            row.update(
                segmentation_step(
                    self.context, self.networks, Pair(image, label, image, label), None
                )
            )
            return row
        assert self.pairs is not None
        pair = _pair(self.data, *self.pairs.item(iteration))
        update_registration, update_segmentation = active_updates(
            self.method, iteration, self.settings.iterations
        )
        displacement = None
        if update_registration:
            values, displacement, warped = registration_step(self.context, self.networks, pair)
            displacement = displacement.float()
            row.update(values)
            if self.method.discriminator:
                row.update(discriminator_step(self.context, self.networks, pair, warped))
        if update_segmentation and self.method.segmentation:
            row.update(segmentation_step(self.context, self.networks, pair, displacement))
        return row

    def state(self, iteration: int) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "iteration": iteration,
            "models": {
                key: ckpt.network_record(kind, net) for key, (kind, net) in self.kinds.items()
            },
            "optimizers": {key: opt.state_dict() for key, opt in self.networks.optimizers.items()},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": list(self.history),
        }

    def restore(self, state: dict[str, Any]) -> int:
        for key, (_, net) in self.kinds.items():
            net.load_state_dict(state["models"][key]["state_dict"])
        for key, optimizer in self.networks.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.history = list(state["history"])
        return int(state["iteration"])


def _resumable(state: dict[str, Any] | None, run: _Run, path: Path) -> bool:
    if state is None:
        return False
    if state.get("identity") != run.identity:
        LOG.warning("%s was written by another method, split or setting; starting over", path)
        return False
    if int(state.get("iteration", 0)) > run.settings.iterations:
        LOG.warning("%s is past train.iterations=%d; starting over", path, run.settings.iterations)
        return False
    return True


def _write_untrained(method: MethodSpec, manifest: Manifest, out_dir: Path) -> TrainResult:
    """Methods without training (Affine only) still leave the files of a training step."""
    model_path = out_dir / MODEL_FILE
    ckpt.save_model(model_path, method.name, {}, manifest.labels, 0)
    write_losses_csv([], out_dir / LOSSES_CSV)
    plot_losses([], out_dir / LOSSES_PNG, f"{method.title}: nothing to train")
    return TrainResult(model_path, out_dir / LOSSES_CSV, out_dir / LOSSES_PNG, 0, 0, 0.0)


def _describe(row: dict[str, float]) -> dict[str, str]:
    return {key: f"{value:.3g}" for key, value in row.items() if key != "iteration" and value != 0}


def train(
    method: MethodSpec,
    manifest: Manifest,
    split: Split,
    settings: TrainSettings,
    out_dir: Path,
    device: torch.device,
    callback: IterationCallback | None = None,
) -> TrainResult:
    """Train ``method`` on ``split`` and write ``model.pt``, ``losses.csv``, ``losses.png``.

    ``callback(iteration, losses)`` runs after each iteration (and its checkpoint);
    an exception raised there stops the run as a kill would.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not method.trains:
        return _write_untrained(method, manifest, out_dir)
    set_threads(settings.threads)
    run = _Run(method, manifest, split, settings, device)
    checkpoint_path = out_dir / CHECKPOINT_FILE
    for path in (checkpoint_path, out_dir / MODEL_FILE):
        for leftover in remove_stale_temporaries(path):
            LOG.info("removed %s, left by an interrupted write", leftover)
    state = ckpt.read_payload(checkpoint_path, "checkpoint") if checkpoint_path.exists() else None
    start = (
        run.restore(state) if state is not None and _resumable(state, run, checkpoint_path) else 0
    )
    if start:
        LOG.info(
            "resuming %s on %s from %s at iteration %d",
            method.name,
            split.name,
            checkpoint_path,
            start,
        )
    began = time.perf_counter()
    progress = tqdm(
        range(start, settings.iterations),
        initial=start,
        total=settings.iterations,
        desc=f"{method.name} {split.name}",
        mininterval=2.0,
        dynamic_ncols=True,
    )
    for iteration in progress:
        try:
            row = run.iterate(iteration)
        except NonFiniteLossError as error:
            kept = (
                f"the last good checkpoint '{checkpoint_path}' is kept"
                if checkpoint_path.exists()
                else "no checkpoint was written yet"
            )
            raise DeeprsError(
                f"training {method.name} on {split.name} stopped at iteration {iteration}: "
                f"{error}; {kept}; lower train.lr or check the input images"
            ) from None
        run.history.append(row)
        progress.set_postfix(_describe(row), refresh=False)
        done = iteration + 1
        if done % settings.checkpoint_every == 0 and done < settings.iterations:
            ckpt.save_atomic(run.state(done), checkpoint_path)
            LOG.info("iteration %d/%d: %s", done, settings.iterations, _describe(row))
        if callback is not None:
            callback(iteration, row)
    progress.close()
    seconds = time.perf_counter() - began
    model_path = out_dir / MODEL_FILE
    ckpt.save_model(model_path, method.name, run.kinds, manifest.labels, settings.iterations)
    write_losses_csv(run.history, out_dir / LOSSES_CSV)
    plot_losses(run.history, out_dir / LOSSES_PNG, f"{method.title} on {split.name}")
    checkpoint_path.unlink(missing_ok=True)
    LOG.info(
        "trained %s on %s: %d iterations in %.1f s",
        method.name,
        split.name,
        settings.iterations - start,
        seconds,
    )
    return TrainResult(
        model_path, out_dir / LOSSES_CSV, out_dir / LOSSES_PNG, settings.iterations, start, seconds
    )
