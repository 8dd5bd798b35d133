"""The one training loop: every method of :mod:`deeprs.methods` is a configuration of it.

Per iteration (batch 1, alternating as in section 3.2 of the paper): an R update on a
(moving, fixed) pair, a D update on the same pair and the detached warp, then an S update
on R's augmentation and weakly supervised data. Segmentation-only methods skip R and D and
train S on one labelled image. At iteration 0, every ``validate_every`` iterations and at
the end, the Dice of S and R on the split's validation cases is recorded
(:mod:`deeprs.train.validation`, ``validation.csv``): the curve that shows convergence. The
final model is the last iteration's; nothing is selected on any score. Every
``checkpoint_every`` iterations the whole state (networks, optimisers, random generator,
loss and validation history) is saved atomically; a rerun resumes from it and ends with
exactly the weights of an uninterrupted run (on the CPU).
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

from deeprs import perf
from deeprs.config import read_section, section_defaults
from deeprs.data.cases import Manifest, Split
from deeprs.errors import DeeprsError
from deeprs.io import remove_stale_temporaries
from deeprs.methods import MethodSpec
from deeprs.nets import build_network
from deeprs.progress import Progress
from deeprs.terms import WEIGHT_KEYS
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
    joint_step,
    segmentation_step,
)
from deeprs.train.validation import (
    VALIDATION_CSV,
    ValidationSet,
    load_validation_set,
    validate,
    write_validation_csv,
)

LOG = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
LOSSES_CSV = "losses.csv"
LOSSES_PNG = "losses.png"

RMSPROP_ALPHA = 0.9
"""Keras' RMSprop decay (rho), the paper's framework; torch's default is 0.99."""


_DEFAULTS = section_defaults("train")


@dataclass(frozen=True)
class TrainSettings:
    """Settings of one training run: config section ``train`` (without the per-job device
    and threads) and the study's seed. Defaults come from the config schema."""

    iterations: int = _DEFAULTS["iterations"]
    width: float = _DEFAULTS["width"]
    integration_steps: int = _DEFAULTS["integration_steps"]
    lr: float = _DEFAULTS["lr"]
    weights: dict[str, float] = field(default_factory=lambda: dict(_DEFAULTS["weights"]))
    checkpoint_every: int = _DEFAULTS["checkpoint_every"]
    validate_every: int = _DEFAULTS["validate_every"]
    seed: int = _DEFAULTS["seed"]
    cpu_bf16: bool = _DEFAULTS["cpu_bf16"]
    discriminator_lr: float | None = _DEFAULTS["discriminator_lr"]
    """D's learning rate; None (config null) means ``lr``, as in the paper."""

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(WEIGHT_KEYS)
        if unknown:
            raise DeeprsError(
                f"config key 'train.weights' has unknown terms {sorted(unknown)}; "
                f"use {', '.join(WEIGHT_KEYS)}"
            )
        object.__setattr__(self, "weights", {**_DEFAULTS["weights"], **self.weights})
        if self.discriminator_lr is None:
            object.__setattr__(self, "discriminator_lr", self.lr)
        if min(self.iterations, self.checkpoint_every, self.validate_every) < 1:
            raise DeeprsError(
                "config keys 'train.iterations', 'train.checkpoint_every' and "
                "'train.validate_every' must be >= 1"
            )

    @classmethod
    def from_json(cls, text: str) -> TrainSettings:
        """The settings a ``train`` rule passes (:func:`deeprs.config.section_json`), checked
        against the schema and completed with its defaults."""
        return cls(**read_section(text, "train"))

    def resume_key(self) -> dict[str, Any]:
        """The settings a checkpoint must share to be resumed (not the run length)."""
        return {
            "width": self.width,
            "integration_steps": self.integration_steps,
            "lr": self.lr,
            "weights": dict(self.weights),
            "seed": self.seed,
            "cpu_bf16": self.cpu_bf16,
            "discriminator_lr": self.discriminator_lr,
        }


@dataclass
class TrainResult:
    model_path: Path
    losses_csv: Path
    losses_png: Path
    validation_csv: Path
    iterations: int
    resumed_from: int
    seconds: float

    @property
    def seconds_per_iteration(self) -> float:
        trained = self.iterations - self.resumed_from
        return self.seconds / trained if trained else 0.0


IterationCallback = Callable[[int, dict[str, float]], None]


@dataclass
class StepSetup:
    """A method's networks, their kinds (for ``model.pt``) and the context of its steps."""

    networks: Networks
    kinds: dict[str, tuple[str, nn.Module]]
    context: StepContext


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
        registration = seeded("voxelmorph2", integration_steps=settings.integration_steps)
        kinds["registration"] = ("voxelmorph2", registration)
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
            lr = settings.discriminator_lr if key == "discriminator" else settings.lr
            optimizers[key] = torch.optim.RMSprop(net.parameters(), lr=lr, alpha=RMSPROP_ALPHA)
    networks = Networks(
        registration=kinds.get("registration", (None, None))[1],
        segmentation=kinds.get("segmentation", (None, None))[1],
        discriminator=kinds.get("discriminator", (None, None))[1],
        optimizers=optimizers,
    )
    return networks, kinds


def build_step(
    method: MethodSpec, num_classes: int, settings: TrainSettings, device: torch.device
) -> StepSetup:
    """Networks, optimisers and step context exactly as the trainer builds them.

    ``deeprs bench`` times the trainer's steps on what this returns.
    """
    networks, kinds = build_networks(method, num_classes, settings, device)
    context = StepContext(
        method=method,
        weights=settings.weights,
        num_classes=num_classes,
        device=device,
        generator=torch.Generator().manual_seed(settings.seed),
        discriminator_lr=settings.discriminator_lr,
        cpu_bf16=settings.cpu_bf16,
    )
    return StepSetup(networks, kinds, context)


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


def _describe(row: dict[str, float]) -> dict[str, str]:
    return {key: f"{value:.3g}" for key, value in row.items() if key != "iteration" and value != 0}


class Trainer:
    """One training run of ``method`` on ``split``, in stages.

    :meth:`setup` builds the networks and loads the data, :meth:`resume` continues from a
    checkpoint of the same run, :meth:`iterate` does one R/D/S iteration, :meth:`validate`
    records the validation Dice, :meth:`checkpoint` saves the whole state, :meth:`finish`
    writes ``model.pt``, ``losses.csv``, ``losses.png`` and ``validation.csv``; :meth:`run`
    does them in order.
    """

    def __init__(
        self,
        method: MethodSpec,
        manifest: Manifest,
        split: Split,
        settings: TrainSettings,
        out_dir: Path,
        device: torch.device,
    ) -> None:
        self.method = method
        self.manifest = manifest
        self.split = split
        self.settings = settings
        self.device = device
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / CHECKPOINT_FILE
        self.model_path = self.out_dir / MODEL_FILE
        self.history: list[dict[str, float]] = []
        self.validation_rows: list[dict[str, float | str]] = []

    def setup(self) -> None:
        """Networks, optimisers, the training data on the device and the data order."""
        method, settings = self.method, self.settings
        step = build_step(method, len(self.manifest.labels) + 1, settings, self.device)
        self.networks, self.kinds, self.context = step.networks, step.kinds, step.context
        self.generator = self.context.generator
        multiple = max(getattr(net, "size_divisor", 1) for _, net in self.kinds.values())
        self.data = load_training_data(
            self.manifest,
            self.split,
            self.device,
            labelled_fixed=method.labelled_fixed,
            multiple=max(NETWORK_MULTIPLE, multiple),
        )
        # channels_last_3d weights and volumes: 1.4x on the joint step (deeprs bench).
        layout = perf.default_options(self.device)
        perf.prepare_networks([net for _, net in self.kinds.values()], layout, self.data.shape)
        self.data.images = {
            case: perf.prepare_volume(image, layout) for case, image in self.data.images.items()
        }
        self.validation_set: ValidationSet = load_validation_set(
            self.manifest, self.split, self.device, max(NETWORK_MULTIPLE, multiple)
        )
        validation_volumes = self.validation_set.volumes
        validation_volumes.images = {
            case: perf.prepare_volume(image, layout)
            for case, image in validation_volumes.images.items()
        }
        self.pairs = (
            EpochSampler(training_pairs(self.data.moving_ids, self.data.fixed_ids), settings.seed)
            if method.registration
            else None
        )
        self.labelled = EpochSampler(self.data.moving_ids, settings.seed)
        self.identity = {
            "method": method.name,
            "settings": settings.resume_key(),
            "split": self.split.to_json(),
            "shape": list(self.data.shape),
        }

    def resume(self) -> int:
        """The iteration to start from: that of a checkpoint of this very run, else 0.

        Temporaries of a killed write are removed first; a checkpoint of another method,
        split or setting is ignored with a warning.
        """
        for path in (self.checkpoint_path, self.model_path):
            for leftover in remove_stale_temporaries(path):
                LOG.info("removed %s, left by an interrupted write", leftover)
        state = ckpt.read_checkpoint(self.checkpoint_path)
        if state is None:
            return 0
        if state.get("identity") != self.identity:
            LOG.warning(
                "%s was written by another method, split or setting; starting over",
                self.checkpoint_path,
            )
            return 0
        if int(state.get("iteration", 0)) > self.settings.iterations:
            LOG.warning(
                "%s is past train.iterations=%d; starting over",
                self.checkpoint_path,
                self.settings.iterations,
            )
            return 0
        for key, (_, net) in self.kinds.items():
            net.load_state_dict(state["models"][key]["state_dict"])
        for key, optimizer in self.networks.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.history = list(state["history"])
        self.validation_rows = list(state.get("validation", []))
        start = int(state["iteration"])
        LOG.info(
            "resuming %s on %s from %s at iteration %d",
            self.method.name,
            self.split.name,
            self.checkpoint_path,
            start,
        )
        return start

    def iterate(self, iteration: int) -> dict[str, float]:
        """One iteration: the R, D and S updates the method has (S alone for S baselines)."""
        row = empty_row(iteration)
        if self.method.supervised_only:
            case = self.labelled.item(iteration)
            image, label = self.data.images[case], self.data.labels[case]
            if self.method.manual_augmentation:
                image, label = augment_pair(image, label, self.generator, self.manifest.spacing_zyx)
            # S alone sees one labelled image; it stands in both roles of the pair.
            pair = Pair(image, label, image, label)
            row.update(segmentation_step(self.context, self.networks, pair, None))
            return row
        assert self.pairs is not None
        pair = _pair(self.data, *self.pairs.item(iteration))
        update_registration, update_segmentation = active_updates(
            self.method, iteration, self.settings.iterations
        )
        row.update(
            joint_step(self.context, self.networks, pair, update_registration, update_segmentation)
        )
        return row

    def checkpoint(self, iteration: int) -> None:
        """Save everything a resumed run needs to continue exactly (written atomically)."""
        state = {
            "identity": self.identity,
            "iteration": iteration,
            "models": {
                key: ckpt.network_record(kind, net) for key, (kind, net) in self.kinds.items()
            },
            "optimizers": {key: opt.state_dict() for key, opt in self.networks.optimizers.items()},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": list(self.history),
            "validation": list(self.validation_rows),
        }
        ckpt.save_atomic(state, self.checkpoint_path)

    def validate(self, iteration: int) -> None:
        """Record the validation Dice of S and R, and R's folding, after ``iteration`` iterations."""
        scores = validate(
            self.validation_set,
            self.networks.registration,
            self.networks.segmentation,
            self.settings.cpu_bf16,
        )
        self.validation_rows.append(
            {"iteration": iteration, **scores, "source": self.validation_set.source}
        )
        LOG.info(
            "validation at iteration %d (%s cases): %s",
            iteration,
            self.validation_set.source,
            ", ".join(f"{name} {value:.3f}" for name, value in scores.items() if value == value),
        )

    def finish(self, start: int, seconds: float) -> TrainResult:
        """Write the model, the loss history and its plot; drop the checkpoint."""
        settings = self.settings
        ckpt.save_model(
            self.model_path, self.method.name, self.kinds, self.manifest.labels, settings.iterations
        )
        write_losses_csv(self.history, self.out_dir / LOSSES_CSV)
        write_validation_csv(self.validation_rows, self.out_dir / VALIDATION_CSV)
        plot_losses(
            self.history,
            self.out_dir / LOSSES_PNG,
            f"{self.method.title} on {self.split.name}",
        )
        self.checkpoint_path.unlink(missing_ok=True)
        LOG.info(
            "trained %s on %s: %d iterations in %.1f s",
            self.method.name,
            self.split.name,
            settings.iterations - start,
            seconds,
        )
        return TrainResult(
            self.model_path,
            self.out_dir / LOSSES_CSV,
            self.out_dir / LOSSES_PNG,
            self.out_dir / VALIDATION_CSV,
            settings.iterations,
            start,
            seconds,
        )

    def finish_untrained(self) -> TrainResult:
        """Methods without training (Affine only) still leave the files of a training step."""
        ckpt.save_model(self.model_path, self.method.name, {}, self.manifest.labels, 0)
        write_losses_csv([], self.out_dir / LOSSES_CSV)
        write_validation_csv([], self.out_dir / VALIDATION_CSV)
        plot_losses([], self.out_dir / LOSSES_PNG, f"{self.method.title}: nothing to train")
        return TrainResult(
            self.model_path,
            self.out_dir / LOSSES_CSV,
            self.out_dir / LOSSES_PNG,
            self.out_dir / VALIDATION_CSV,
            0,
            0,
            0.0,
        )

    def _stopped(self, iteration: int, error: NonFiniteLossError) -> DeeprsError:
        kept = (
            f"the last good checkpoint '{self.checkpoint_path}' is kept"
            if self.checkpoint_path.exists()
            else "no checkpoint was written yet"
        )
        return DeeprsError(
            f"training {self.method.name} on {self.split.name} stopped at iteration "
            f"{iteration}: {error}; {kept}; lower train.lr or check the input images"
        )

    def run(self, callback: IterationCallback | None = None) -> TrainResult:
        """Set up, resume, iterate (checkpointing every ``checkpoint_every``), finish.

        ``callback(iteration, losses)`` runs after each iteration (and its checkpoint);
        an exception raised there stops the run as a kill would.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not self.method.trains:
            return self.finish_untrained()
        self.setup()
        start = self.resume()
        settings = self.settings
        began = time.perf_counter()
        progress = Progress(
            settings.iterations, f"train {self.method.name} {self.split.name}", initial=start
        )
        if start == 0:
            self.validate(0)
        for iteration in range(start, settings.iterations):
            try:
                row = self.iterate(iteration)
            except NonFiniteLossError as error:
                raise self._stopped(iteration, error) from None
            self.history.append(row)
            progress.update(values=_describe(row))
            done = iteration + 1
            if done % settings.validate_every == 0 or done == settings.iterations:
                self.validate(done)
            if done % settings.checkpoint_every == 0 and done < settings.iterations:
                self.checkpoint(done)
                LOG.info("iteration %d/%d: %s", done, settings.iterations, _describe(row))
            if callback is not None:
                callback(iteration, row)
        progress.close()
        return self.finish(start, time.perf_counter() - began)


def train(
    method: MethodSpec,
    manifest: Manifest,
    split: Split,
    settings: TrainSettings,
    out_dir: Path,
    device: torch.device,
    callback: IterationCallback | None = None,
) -> TrainResult:
    """Train ``method`` on ``split`` and write ``model.pt``, ``losses.csv``, ``losses.png``
    and ``validation.csv``."""
    return Trainer(method, manifest, split, settings, out_dir, device).run(callback)
