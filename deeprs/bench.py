"""``deeprs bench``: time and memory of the training steps, ours against a plain reference.

For every size and every step (R, S, D and the whole joint iteration of DeepRS) the peak
memory of each implementation is measured in a child process of its own (the peak
resident memory of one step minus the resident memory before it, i.e. beyond models and
data; ``torch.cuda.max_memory_allocated`` on CUDA), then all implementations are timed in
one child, taking turns step by step, so that the ratios survive a shared machine whose
load changes. Implementations:

* ``ours``: the trainer's steps (:mod:`deeprs.train.steps`) with the trainer's default
  settings (bf16 autocast on the CPU too, ``TrainSettings.cpu_bf16``);
* ``ours+perf``: the same steps with :mod:`deeprs.perf` (channels_last_3d, cudnn.benchmark);
* ``reference``: :mod:`deeprs.bench_reference`, written like VoxelMorph's reference code.

The timing child does ``--warmup`` untimed rounds, then ``--repeats`` timed ones; the JSON
keeps every time, the median, voxels per second and the machine's load average.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from deeprs.device import select_device
from deeprs.errors import ConfigError
from deeprs.io import write_json

SIZES: dict[str, tuple[tuple[int, int, int], float]] = {
    "demo": ((48, 48, 32), 0.5),
    "paper": ((128, 128, 96), 1.0),
}
"""Named sizes: (x, y, z) voxels and the network width factor."""

STEPS = ("R", "S", "D", "joint")
IMPLEMENTATIONS = ("ours", "ours+perf", "reference")
NUM_CLASSES = 8
"""Background and the seven MM-WHS structures."""
WEIGHTS = {"adv": 1.0, "drc": 10.0, "cc": 1.0, "smooth": 1.0, "acm": 1.0, "ce": 1.0}
CUSTOM_SIZE = re.compile(r"^(\d+)x(\d+)x(\d+)@([0-9.]+)$")


@dataclass(frozen=True)
class BenchCase:
    """One measurement: an implementation's step at a size, on a device."""

    implementation: str
    step: str
    size: str
    shape_xyz: tuple[int, int, int]
    width: float
    device: str
    threads: int
    warmup: int
    repeats: int
    seed: int = 2020


def parse_size(name: str) -> tuple[str, tuple[int, int, int], float]:
    """``demo``, ``paper`` or ``XxYxZ@width`` (e.g. ``32x32x16@0.25``)."""
    if name in SIZES:
        shape, width = SIZES[name]
        return name, shape, width
    match = CUSTOM_SIZE.match(name)
    if not match:
        raise ConfigError(
            f"bench size '{name}' is not one of {', '.join(SIZES)} or XxYxZ@width "
            "(e.g. 32x32x16@0.25)"
        )
    x, y, z, width = match.groups()
    shape = (int(x), int(y), int(z))
    if any(side % 16 for side in shape):
        raise ConfigError(f"bench size '{name}': every side must be a multiple of 16")
    return name, shape, float(width)


def synthetic_pair(
    shape_zyx: tuple[int, int, int], num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth random moving and fixed images in [0, 1] and a moving label map, all (1,1,D,H,W).

    Smooth rather than white noise so that NCC and the networks see image-like statistics;
    the timing does not depend on the content.
    """
    generator = torch.Generator().manual_seed(seed)

    def smooth_field() -> torch.Tensor:
        field = torch.rand(1, 1, *shape_zyx, generator=generator)
        for _ in range(2):
            field = F.avg_pool3d(field, 5, stride=1, padding=2, count_include_pad=False)
        return (field - field.min()) / (field.max() - field.min())

    moving, fixed, label_field = smooth_field(), smooth_field(), smooth_field()
    edges = torch.quantile(label_field.flatten(), torch.linspace(0, 1, num_classes + 1)[1:-1])
    return moving, torch.bucketize(label_field, edges).long(), fixed


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ours_step(case: BenchCase, device: torch.device, perf: bool) -> Callable[[], None]:
    """One of the trainer's updates on a synthetic pair, ready to be called repeatedly."""
    from deeprs import perf as perf_options
    from deeprs.methods import get_method
    from deeprs.nets.spatial import warp
    from deeprs.train.steps import (
        Pair,
        discriminator_step,
        registration_step,
        segmentation_step,
    )
    from deeprs.train.trainer import TrainSettings, build_step

    method = get_method("deeprs")
    settings = TrainSettings(width=case.width, seed=case.seed, weights=WEIGHTS)
    step = build_step(method, NUM_CLASSES, settings, device)
    networks, context = step.networks, step.context
    moving, label, fixed = (
        tensor.to(device) for tensor in synthetic_pair(_zyx(case), NUM_CLASSES, case.seed)
    )
    if perf:
        options = perf_options.default_options(device)
        perf_options.prepare_networks(
            [networks.registration, networks.segmentation, networks.discriminator], options
        )
        moving, fixed = (perf_options.prepare_volume(v, options) for v in (moving, fixed))
    pair = Pair(moving=moving, moving_label=label, fixed=fixed, fixed_label=None)
    with torch.no_grad():
        displacement = networks.registration(moving, fixed).float()
        warped = warp(moving, displacement)

    def joint() -> None:
        _, step_displacement, step_warped = registration_step(context, networks, pair)
        discriminator_step(context, networks, pair, step_warped)
        segmentation_step(context, networks, pair, step_displacement.float())

    return {
        "R": lambda: registration_step(context, networks, pair),
        "D": lambda: discriminator_step(context, networks, pair, warped),
        "S": lambda: segmentation_step(context, networks, pair, displacement),
        "joint": joint,
    }[case.step]


def _reference_step(case: BenchCase, device: torch.device) -> Callable[[], None]:
    from deeprs import bench_reference as reference

    model = reference.build_reference(_zyx(case), NUM_CLASSES, case.width, device, WEIGHTS)
    moving, label, fixed = (
        tensor.to(device) for tensor in synthetic_pair(_zyx(case), NUM_CLASSES, case.seed)
    )
    generator = torch.Generator().manual_seed(case.seed)
    with torch.no_grad():
        flow = model.registration(moving, fixed)
        warped = model.transformer(moving, flow)
    return {
        "R": lambda: reference.registration_step(model, moving, fixed),
        "D": lambda: reference.discriminator_step(model, moving, fixed, warped),
        "S": lambda: reference.segmentation_step(model, moving, label, fixed, flow, 0.5),
        "joint": lambda: reference.joint_iteration(model, moving, label, fixed, generator),
    }[case.step]


def _zyx(case: BenchCase) -> tuple[int, int, int]:
    x, y, z = case.shape_xyz
    return (z, y, x)


def _max_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build_step(case: BenchCase, device: torch.device) -> Callable[[], None]:
    if case.implementation == "reference":
        return _reference_step(case, device)
    return _ours_step(case, device, perf=case.implementation == "ours+perf")


def _timed(step: Callable[[], None], device: torch.device) -> float:
    _synchronize(device)
    began = time.perf_counter()
    step()
    _synchronize(device)
    return time.perf_counter() - began


def measure_memory(case: BenchCase) -> float:
    """Peak memory (MB) of one step of ``case`` in this process, beyond models and data."""
    from deeprs.device import select_device, set_threads

    device = select_device(case.device)
    set_threads(case.threads)
    torch.manual_seed(case.seed)
    step = _build_step(case, device)
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_before = _max_rss_mb()
    step()
    return _max_rss_mb() - rss_before


def measure_times(cases: list[BenchCase]) -> list[list[float]]:
    """Step times of several implementations in this process, taken in turns.

    Round-robin (one step of each, then again) so that a change in the machine's load
    falls on every implementation alike and the ratios stay meaningful.
    """
    from deeprs.device import select_device, set_threads

    device = select_device(cases[0].device)
    set_threads(cases[0].threads)
    steps = []
    for case in cases:
        torch.manual_seed(case.seed)
        steps.append(_build_step(case, device))
    for _ in range(cases[0].warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(cases[0].repeats):
        for index, step in enumerate(steps):
            times[index].append(_timed(step, device))
    return times


def _in_child(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a fresh process, so that its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=context, max_tasks_per_child=1
    ) as pool:
        return pool.submit(function, *args).result()


def run_cases(cases: list[BenchCase]) -> list[dict[str, Any]]:
    """Memory of each case in its own child, then their times in turns in one child."""
    memory = [_in_child(measure_memory, case) for case in cases]
    times = _in_child(measure_times, cases)
    results = []
    for case, peak_mb, case_times in zip(cases, memory, times, strict=True):
        median = statistics.median(case_times)
        voxels = case.shape_xyz[0] * case.shape_xyz[1] * case.shape_xyz[2]
        results.append(
            {
                **asdict(case),
                "times_s": case_times,
                "median_s": median,
                "voxels_per_s": voxels / median,
                "peak_memory_mb": peak_mb,
            }
        )
    return results


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reference time / our time (speed-up) and memory ratios, per size, step and variant."""
    by_key = {(r["size"], r["step"], r["implementation"]): r for r in results}
    rows = []
    for (size, step, implementation), ours in by_key.items():
        reference = by_key.get((size, step, "reference"))
        if implementation == "reference" or reference is None:
            continue
        rows.append(
            {
                "size": size,
                "step": step,
                "implementation": implementation,
                "speedup": reference["median_s"] / ours["median_s"],
                "memory_ratio": (
                    ours["peak_memory_mb"] / reference["peak_memory_mb"]
                    if reference["peak_memory_mb"] > 0
                    else None
                ),
            }
        )
    return rows


def format_table(results: list[dict[str, Any]]) -> str:
    """The small table ``deeprs bench`` prints: one row per size, step and implementation."""
    speedups = {(r["size"], r["step"], r["implementation"]): r for r in ratios(results)}
    header = (
        f"{'size':<16} {'step':<6} {'implementation':<10} {'median s':>9} "
        f"{'Mvox/s':>8} {'peak MB':>8} {'speed-up':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        ratio = speedups.get((r["size"], r["step"], r["implementation"]))
        speedup = f"{ratio['speedup']:.2f}x" if ratio else "1.00x"
        lines.append(
            f"{r['size']:<16} {r['step']:<6} {r['implementation']:<10} {r['median_s']:>9.3f} "
            f"{r['voxels_per_s'] / 1e6:>8.3f} {r['peak_memory_mb']:>8.0f} {speedup:>9}"
        )
    return "\n".join(lines)


def benchmark(
    sizes: list[str],
    steps: list[str],
    implementations: list[str],
    device: str,
    threads: int,
    repeats: int,
    warmup: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every case (each in its own process) and collect the results and ratios."""
    results = []
    for name in sizes:
        size, shape, width = parse_size(name)
        for step in steps:
            cases = [
                BenchCase(impl, step, size, shape, width, device, threads, warmup, repeats)
                for impl in implementations
            ]
            for result in run_cases(cases):
                results.append(result)
                if progress is not None:
                    progress(
                        f"{size} {step} {result['implementation']}: "
                        f"{result['median_s']:.3f} s/step, peak {result['peak_memory_mb']:.0f} MB"
                    )
    return {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "device": str(select_device(device)),
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "results": results,
        "ratios": ratios(results),
    }


def _choices(value: str, allowed: tuple[str, ...], option: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise ConfigError(f"option {option}: '{value}' must list some of {', '.join(allowed)}")
    return items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument(
        "--sizes", default="demo,paper", help="comma list of demo, paper or XxYxZ@width"
    )
    parser.add_argument("--steps", default=",".join(STEPS), help="comma list of R, S, D, joint")
    parser.add_argument(
        "--implementations",
        default=",".join(IMPLEMENTATIONS),
        help="comma list of ours, ours+perf, reference",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads"
    )
    parser.add_argument("--out", type=Path, default=Path("results/bench/bench.json"))


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        raise ConfigError("options --repeats and --threads must be >= 1 and --warmup >= 0")
    select_device(args.device)
    sizes = [item.strip() for item in args.sizes.split(",") if item.strip()]
    for size in sizes:
        parse_size(size)
    report = benchmark(
        sizes=sizes,
        steps=_choices(args.steps, STEPS, "--steps"),
        implementations=_choices(args.implementations, IMPLEMENTATIONS, "--implementations"),
        device=args.device,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        progress=lambda line: print(line, flush=True),
    )
    write_json(args.out, report)
    print(format_table(report["results"]))
    print(f"load average {report['load_average']}; written to {args.out}")
    return 0
