"""``make gpu-check``: does a CUDA machine run the whole DeepRS step on its GPU, and how fast?

One command for a GPU machine that has PyTorch but not the imaging stack (nibabel,
SimpleITK, Snakemake) and no network: it imports torch and the package's training code
only, and makes its data in memory. It

1. runs ``deeprs bench --device cuda`` (the joint step at the bench sizes, ours against
   both references, with the GPU's own peak GEMMs);
2. trains DeepRS twice with the same seed at 128x128x96, width 1 (the paper preset's
   networks, bf16 autocast and cudnn.benchmark as the trainer sets them) for 300
   iterations on synthetic volumes, printing seconds per iteration, peak GPU memory and the
   Dice of S on held-out synthetic volumes, and the Dice spread between the two runs
   (cuDNN is not bitwise deterministic);
3. fails loudly (exit status 1, ``GPU CHECK FAILED``) if there is no CUDA device, or if any
   operation of a watched iteration ran on the CPU, or any parameter, gradient or optimiser
   state ended up there.

``--device cpu`` runs the same code on the CPU at a tiny size (a dry run for the tests; it
checks nothing about a GPU and says so).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from deeprs.errors import ConfigError
from deeprs.io import write_json

TRAIN_SHAPE_XYZ = (128, 128, 96)
WIDTH = 1.0
ITERATIONS = 300
NUM_CLASSES = 8
TRAINING_VOLUMES = 4
TEST_VOLUMES = 2
WATCHED_ITERATION = 1
"""The iteration run under :class:`CpuOpWatcher` (not the first: cudnn.benchmark's searches)."""


class GpuCheckError(RuntimeError):
    """Something ran on, or was left on, the wrong device."""


class CpuOpWatcher(TorchDispatchMode):
    """Records every operation that reads or writes a tensor off ``expected`` (a CPU fallback).

    Single-value CPU tensors are allowed: PyTorch keeps Python scalars (a loss weight, an
    optimiser's step count) there, and the seeded DSS factor is drawn on the CPU generator
    on purpose (:func:`deeprs.losses.sample_dss_alpha`); none of them is a fallback.
    """

    def __init__(self, expected: torch.device) -> None:
        super().__init__()
        self.expected = expected
        self.fallbacks: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        result = func(*args, **(kwargs or {}))
        for value in tree_leaves((args, kwargs or {}, result)):
            if (
                isinstance(value, torch.Tensor)
                and value.device.type != self.expected.type
                and value.numel() > 1
            ):
                self.fallbacks.append(f"{func} on {value.device} {tuple(value.shape)}")
                break
        return result


def misplaced_state(
    networks: Iterable[nn.Module | None],
    optimizers: Iterable[torch.optim.Optimizer],
    expected: torch.device,
) -> list[str]:
    """Names of the parameters, buffers, gradients and optimiser states not on ``expected``."""
    found = []
    for index, network in enumerate(networks):
        if network is None:
            continue
        for name, tensor in [*network.named_parameters(), *network.named_buffers()]:
            if tensor.device.type != expected.type:
                found.append(f"network {index} {name} on {tensor.device}")
            grad = getattr(tensor, "grad", None)
            if grad is not None and grad.device.type != expected.type:
                found.append(f"network {index} {name}.grad on {grad.device}")
    for optimizer in optimizers:
        for state in optimizer.state.values():
            for key, value in state.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.dim() > 0
                    and value.device.type != expected.type
                ):
                    found.append(f"{type(optimizer).__name__} state {key} on {value.device}")
    return found


def synthetic_cohort(
    shape_zyx: tuple[int, int, int], count: int, seed: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` (image, label) volumes ``(1, 1, D, H, W)`` whose intensities follow the labels.

    Labels are quantile classes of a smooth random field (the same layout idea as the
    bench's pair); the image is the class's mean intensity plus smooth noise, so that S
    has something learnable in a few hundred iterations.
    """
    from deeprs.bench import synthetic_pair

    cohort = []
    generator = torch.Generator().manual_seed(seed)
    for index in range(count):
        texture, label, _ = synthetic_pair(shape_zyx, NUM_CLASSES, seed + index)
        means = torch.rand(NUM_CLASSES, generator=generator)
        image = 0.8 * means[label] + 0.2 * texture
        cohort.append((image.to(device), label.to(device)))
    return cohort


def dice_per_class(prediction: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Dice of every foreground class (NaN for one absent from both maps)."""
    scores = []
    for index in range(1, NUM_CLASSES):
        predicted, expected = prediction == index, target == index
        total = int(predicted.sum()) + int(expected.sum())
        overlap = int((predicted & expected).sum())
        scores.append(2.0 * overlap / total if total else float("nan"))
    return scores


@contextmanager
def _watch(device: torch.device, active: bool) -> Iterator[CpuOpWatcher | None]:
    if not active:
        yield None
        return
    with CpuOpWatcher(device) as watcher:
        yield watcher


def train_once(
    shape_xyz: tuple[int, int, int],
    width: float,
    iterations: int,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """One DeepRS training run on synthetic volumes; raises :class:`GpuCheckError` on a fallback."""
    from deeprs import perf
    from deeprs.methods import get_method
    from deeprs.train.steps import Pair, joint_step
    from deeprs.train.trainer import TrainSettings, build_step

    x, y, z = shape_xyz
    shape_zyx = (z, y, x)
    method = get_method("deeprs")
    settings = TrainSettings(width=width, seed=seed, iterations=iterations)
    setup = build_step(method, NUM_CLASSES, settings, device)
    networks, context = setup.networks, setup.context
    options = perf.default_options(device)
    modules = [networks.registration, networks.segmentation, networks.discriminator]
    perf.prepare_networks(modules, options, shape_zyx)
    cohort = [
        (perf.prepare_volume(image, options), label)
        for image, label in synthetic_cohort(
            shape_zyx, TRAINING_VOLUMES + TEST_VOLUMES, seed, device
        )
    ]
    training, testing = cohort[:TRAINING_VOLUMES], cohort[TRAINING_VOLUMES:]
    order = torch.Generator().manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    fallbacks: list[str] = []
    for iteration in range(iterations):
        moving_index, fixed_index = torch.randperm(TRAINING_VOLUMES, generator=order)[:2].tolist()
        (moving, label), (fixed, _) = training[moving_index], training[fixed_index]
        pair = Pair(moving=moving, moving_label=label, fixed=fixed, fixed_label=None)
        _synchronize(device)
        began = time.perf_counter()
        with _watch(device, iteration == WATCHED_ITERATION) as watcher:
            joint_step(context, networks, pair)
        _synchronize(device)
        times.append(time.perf_counter() - began)
        if watcher is not None:
            fallbacks += watcher.fallbacks
    fallbacks += misplaced_state(modules, networks.optimizers.values(), device)
    if fallbacks:
        shown = "; ".join(fallbacks[:10])
        raise GpuCheckError(f"{len(fallbacks)} operation(s) or tensor(s) off {device}: {shown}")
    dice = _test_dice(networks.segmentation, testing, device, settings.cpu_bf16)
    return {
        "seconds_per_iteration": statistics.median(times[1:] or times),
        "first_iteration_s": times[0],
        "peak_memory_mb": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "mean_dice": statistics.fmean(d for d in dice if d == d),
        "dice_per_class": dice,
    }


def _test_dice(
    segmentation: nn.Module,
    testing: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    cpu_bf16: bool,
) -> list[float]:
    from deeprs.device import autocast

    segmentation.eval()
    per_class: list[list[float]] = []
    with torch.no_grad(), autocast(device, cpu_bf16):
        for image, label in testing:
            prediction = segmentation(image).argmax(dim=1, keepdim=True)
            per_class.append(dice_per_class(prediction, label))
    segmentation.train()
    return [
        statistics.fmean(v for v in column if v == v) if any(v == v for v in column) else 0.0
        for column in zip(*per_class, strict=True)
    ]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _shape(text: str) -> tuple[int, int, int]:
    sides = [int(side) for side in text.split("x") if side.isdigit()]
    if len(sides) != 3 or any(side % 16 for side in sides):
        raise ConfigError(f"option --shape: '{text}' must be XxYxZ, multiples of 16")
    return sides[0], sides[1], sides[2]


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """The bench, then two same-seed trainings; raises :class:`GpuCheckError` on a fallback."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GpuCheckError("no CUDA device: torch.cuda.is_available() is False")
    try:
        import deeprs.train.trainer  # noqa: F401  (the training code and what it imports)
    except ModuleNotFoundError as error:
        raise GpuCheckError(
            f"the training code needs the module '{error.name}', which this Python lacks; "
            f"install it (pip install {error.name}) or use an environment that has it"
        ) from error
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    if args.bench_sizes:
        from deeprs.bench import IMPLEMENTATIONS, benchmark, format_table

        bench = benchmark(
            sizes=args.bench_sizes.split(","),
            steps=["joint"],
            implementations=list(IMPLEMENTATIONS),
            device=args.device,
            threads=[1],
            repeats=3,
            warmup=2,
            progress=lambda line: print(line, flush=True),
        )
        print(format_table(bench["results"], bench["peaks"]), flush=True)
        report["bench"] = bench
    shape = _shape(args.shape)
    runs = []
    for run in range(2):
        result = train_once(shape, args.width, args.iterations, args.seed, device)
        runs.append(result)
        memory = result["peak_memory_mb"]
        print(
            f"training run {run + 1}: {result['seconds_per_iteration']:.3f} s/iteration "
            f"(first {result['first_iteration_s']:.1f} s), peak GPU memory "
            f"{'n/a' if memory is None else f'{memory:.0f} MB'}, mean Dice {result['mean_dice']:.4f}",
            flush=True,
        )
    report["training"] = runs
    report["dice_spread"] = abs(runs[0]["mean_dice"] - runs[1]["mean_dice"])
    print(f"Dice spread between the two same-seed runs: {report['dice_spread']:.4f}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deeprs.gpu_check", description=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run)")
    parser.add_argument("--shape", default="x".join(map(str, TRAIN_SHAPE_XYZ)), help="XxYxZ")
    parser.add_argument("--width", type=float, default=WIDTH)
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument(
        "--bench-sizes", default="demo,mid,paper", help="deeprs bench sizes; empty to skip"
    )
    parser.add_argument("--out", type=Path, default=Path("results/gpu-check/gpu_check.json"))
    args = parser.parse_args(argv)
    if args.device != "cuda":
        print(f"dry run on {args.device}: this checks the code path, not a GPU", flush=True)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        report = run_check(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    except GpuCheckError as error:
        print(f"GPU CHECK FAILED: {error}", file=sys.stderr, flush=True)
        return 1
    write_json(args.out, report)
    print(f"GPU check passed on {report['device']}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
