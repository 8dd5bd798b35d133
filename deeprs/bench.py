"""``deeprs bench``: the cost of a training step, ours against two references, and the limit.

For every size, thread count and step (R, S, D and the whole joint iteration of DeepRS) it
states in one run:

* CPU seconds and wall seconds per step (CPU time survives a shared, loaded machine better
  than wall time; both are medians);
* FLOPs per step, counted with :class:`torch.utils.flop_counter.FlopCounterMode` around one
  step of each implementation (convolutions and matrix products; elementwise work is not
  counted), and the achieved GFLOP per CPU-second and per wall-second;
* this machine's peak, measured in the same run: an fp32 and a bf16 GEMM of comparable
  size, timed in turns with the steps; the fraction of peak divides by the faster of the two;
* peak memory of one step of each implementation, in a child process of its own (resident
  high-water mark beyond models and data; ``torch.cuda.max_memory_allocated`` on CUDA).

Implementations, timed in turns step by step in one child process (a change of the
machine's load falls on all alike, so the ratios stay meaningful):

* ``ours``: the trainer's steps (:mod:`deeprs.train.steps`) with the trainer's settings
  (``TrainSettings.cpu_bf16``, :mod:`deeprs.perf`);
* ``plain-fp32``: the plain fp32 eager step with the separable NCC (the best simple code);
* ``voxelmorph-ref``: the same written like VoxelMorph's reference code (9x9x9 NCC).

Both references are :mod:`deeprs.bench_reference`; they compute our losses and gradients
(tested), so the ratios compare execution only.
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
    "demo": ((32, 32, 32), 0.5),
    "mid": ((64, 64, 48), 1.0),
    "paper": ((128, 128, 96), 1.0),
}
"""Named sizes: (x, y, z) voxels and the network width factor (the demo preset's own first)."""

STEPS = ("R", "S", "D", "joint")
IMPLEMENTATIONS = ("ours", "plain-fp32", "voxelmorph-ref")
REFERENCES = ("plain-fp32", "voxelmorph-ref")
NUM_CLASSES = 8
"""Background and the seven MM-WHS structures."""
WEIGHTS = {"adv": 1.0, "drc": 10.0, "cc": 1.0, "smooth": 1.0, "acm": 1.0, "ce": 1.0}
CUSTOM_SIZE = re.compile(r"^(\d+)x(\d+)x(\d+)@([0-9.]+)$")
PEAK_GEMM_SIDE = 1536
"""Side of the square GEMMs that measure the peak (7.2 GFLOP, about as long as a conv layer)."""
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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


def _ours_step(case: BenchCase, device: torch.device) -> Callable[[], None]:
    """One of the trainer's updates on a synthetic pair, ready to be called repeatedly."""
    from deeprs import perf
    from deeprs.methods import get_method
    from deeprs.nets.spatial import warp
    from deeprs.train.steps import (
        Pair,
        discriminator_step,
        joint_step,
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
    options = perf.default_options(device)
    perf.prepare_networks(
        [networks.registration, networks.segmentation, networks.discriminator],
        options,
        _zyx(case),
    )
    moving, fixed = (perf.prepare_volume(v, options) for v in (moving, fixed))
    pair = Pair(moving=moving, moving_label=label, fixed=fixed, fixed_label=None)
    with torch.no_grad():
        displacement = networks.registration(moving, fixed).float()
        warped = warp(moving, displacement)

    return {
        "R": lambda: registration_step(context, networks, pair),
        "D": lambda: discriminator_step(context, networks, pair, warped),
        "S": lambda: segmentation_step(context, networks, pair, displacement),
        "joint": lambda: joint_step(context, networks, pair),
    }[case.step]


def _reference_step(case: BenchCase, device: torch.device) -> Callable[[], None]:
    from deeprs import bench_reference as reference

    model = reference.build_reference(
        _zyx(case),
        NUM_CLASSES,
        case.width,
        device,
        WEIGHTS,
        separable_ncc=case.implementation == "plain-fp32",
    )
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
    if case.implementation in REFERENCES:
        return _reference_step(case, device)
    return _ours_step(case, device)


def _timed(step: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    _synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    _synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def counted_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call of ``step``, counted by PyTorch (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def peak_gemm(dtype: torch.dtype, device: torch.device) -> tuple[Callable[[], None], int]:
    """A square GEMM of ``dtype`` to time, and its FLOPs (2 n^3)."""
    generator = torch.Generator().manual_seed(0)
    side = PEAK_GEMM_SIDE
    a, b = (
        torch.randn(side, side, generator=generator).to(device=device, dtype=dtype)
        for _ in range(2)
    )
    return (lambda: torch.mm(a, b)), 2 * side**3


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


def measure_times(cases: list[BenchCase]) -> dict[str, Any]:
    """FLOPs, wall and CPU times of several implementations and of the peak GEMMs, in turns.

    Round-robin (one step of each, then again) so that a change in the machine's load
    falls on every implementation and on the peak measurement alike.
    """
    from deeprs.device import select_device, set_threads

    device = select_device(cases[0].device)
    set_threads(cases[0].threads)
    steps: list[Callable[[], None]] = []
    for case in cases:
        torch.manual_seed(case.seed)
        steps.append(_build_step(case, device))
    gemms = {name: peak_gemm(dtype, device) for name, dtype in PEAK_DTYPES.items()}
    timed = steps + [gemm for gemm, _ in gemms.values()]
    for _ in range(cases[0].warmup):
        for step in timed:
            step()
    flops = [counted_flops(step) for step in steps]
    wall: list[list[float]] = [[] for _ in timed]
    cpu: list[list[float]] = [[] for _ in timed]
    for _ in range(cases[0].repeats):
        for index, step in enumerate(timed):
            seconds, cpu_seconds = _timed(step, device)
            wall[index].append(seconds)
            cpu[index].append(cpu_seconds)
    peaks = {}
    for offset, (name, (_, gemm_flops)) in enumerate(gemms.items()):
        index = len(steps) + offset
        peaks[name] = {
            "gflop_per_wall_s": gemm_flops / 1e9 / statistics.median(wall[index]),
            "gflop_per_cpu_s": gemm_flops / 1e9 / statistics.median(cpu[index]),
        }
    return {"flops": flops, "wall": wall[: len(steps)], "cpu": cpu[: len(steps)], "peak": peaks}


def _in_child(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a fresh process, so that its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=context, max_tasks_per_child=1
    ) as pool:
        return pool.submit(function, *args).result()


def run_cases(cases: list[BenchCase]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Memory of each case in its own child, then their times in turns in one child."""
    memory = [_in_child(measure_memory, case) for case in cases]
    measured = _in_child(measure_times, cases)
    peak = measured["peak"]
    best_wall = max(p["gflop_per_wall_s"] for p in peak.values())
    best_cpu = max(p["gflop_per_cpu_s"] for p in peak.values())
    results = []
    for index, case in enumerate(cases):
        wall, cpu = measured["wall"][index], measured["cpu"][index]
        median_wall, median_cpu = statistics.median(wall), statistics.median(cpu)
        gflop = measured["flops"][index] / 1e9
        voxels = case.shape_xyz[0] * case.shape_xyz[1] * case.shape_xyz[2]
        results.append(
            {
                **asdict(case),
                "times_s": wall,
                "cpu_times_s": cpu,
                "median_s": median_wall,
                "median_cpu_s": median_cpu,
                "voxels_per_s": voxels / median_wall,
                "gflop": gflop,
                "gflop_per_wall_s": gflop / median_wall,
                "gflop_per_cpu_s": gflop / median_cpu,
                "fraction_of_peak_wall": gflop / median_wall / best_wall,
                "fraction_of_peak_cpu": gflop / median_cpu / best_cpu,
                "peak_memory_mb": memory[index],
            }
        )
    return results, peak


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each reference's time / ours (speed-up, wall and CPU) and memory ratio, per case."""
    by_key = {(r["size"], r["threads"], r["step"], r["implementation"]): r for r in results}
    rows = []
    for (size, threads, step, implementation), ours in by_key.items():
        if implementation in REFERENCES:
            continue
        for reference_name in REFERENCES:
            reference = by_key.get((size, threads, step, reference_name))
            if reference is None:
                continue
            rows.append(
                {
                    "size": size,
                    "threads": threads,
                    "step": step,
                    "implementation": implementation,
                    "reference": reference_name,
                    "speedup": reference["median_s"] / ours["median_s"],
                    "speedup_cpu": reference["median_cpu_s"] / ours["median_cpu_s"],
                    "memory_ratio": (
                        ours["peak_memory_mb"] / reference["peak_memory_mb"]
                        if reference["peak_memory_mb"] > 0
                        else None
                    ),
                }
            )
    return rows


def format_table(results: list[dict[str, Any]], peaks: list[dict[str, Any]]) -> str:
    """The table ``deeprs bench`` prints: one row per size, threads, step and implementation."""
    speedups: dict[tuple[Any, ...], list[str]] = {}
    for r in ratios(results):
        key = (r["size"], r["threads"], r["step"], r["implementation"])
        speedups.setdefault(key, []).append(f"{r['speedup_cpu']:.2f}x")
    header = (
        f"{'size':<16} {'thr':>3} {'step':<5} {'implementation':<14} {'CPU s':>8} "
        f"{'wall s':>8} {'GFLOP':>8} {'GF/CPU-s':>8} {'%peak':>6} {'peak MB':>8} "
        f"{'CPU speed-up vs plain, vm':>26}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        key = (r["size"], r["threads"], r["step"], r["implementation"])
        lines.append(
            f"{r['size']:<16} {r['threads']:>3} {r['step']:<5} {r['implementation']:<14} "
            f"{r['median_cpu_s']:>8.3f} {r['median_s']:>8.3f} {r['gflop']:>8.1f} "
            f"{r['gflop_per_cpu_s']:>8.1f} {100 * r['fraction_of_peak_cpu']:>5.0f}% "
            f"{r['peak_memory_mb']:>8.0f} {', '.join(speedups.get(key, ['-'])):>26}"
        )
    for peak in peaks:
        lines.append(
            f"peak at {peak['size']}, {peak['threads']} thread(s): "
            + ", ".join(
                f"{name} GEMM {value['gflop_per_cpu_s']:.0f} GFLOP/CPU-s "
                f"({value['gflop_per_wall_s']:.0f} per wall-s)"
                for name, value in peak["gemm"].items()
            )
        )
    return "\n".join(lines)


def benchmark(
    sizes: list[str],
    steps: list[str],
    implementations: list[str],
    device: str,
    threads: list[int],
    repeats: int,
    warmup: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every case (each size, thread count and step in its own processes)."""
    results = []
    peaks = []
    for name in sizes:
        size, shape, width = parse_size(name)
        for thread_count in threads:
            for step in steps:
                cases = [
                    BenchCase(impl, step, size, shape, width, device, thread_count, warmup, repeats)
                    for impl in implementations
                ]
                case_results, peak = run_cases(cases)
                peaks.append({"size": size, "threads": thread_count, "step": step, "gemm": peak})
                for result in case_results:
                    results.append(result)
                    if progress is not None:
                        progress(
                            f"{size} {thread_count} thread(s) {step} {result['implementation']}: "
                            f"{result['median_cpu_s']:.3f} CPU-s, {result['median_s']:.3f} s/step, "
                            f"{result['gflop_per_cpu_s']:.0f} GFLOP/CPU-s "
                            f"({100 * result['fraction_of_peak_cpu']:.0f}% of peak), "
                            f"peak {result['peak_memory_mb']:.0f} MB"
                        )
    return {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "device": str(select_device(device)),
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "peaks": peaks,
        "results": results,
        "ratios": ratios(results),
    }


def _choices(value: str, allowed: tuple[str, ...], option: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise ConfigError(f"option {option}: '{value}' must list some of {', '.join(allowed)}")
    return items


def _threads(value: str) -> list[int]:
    try:
        counts = [int(item) for item in value.split(",") if item.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ConfigError(f"option --threads: '{value}' must list thread counts >= 1 (e.g. 1,2)")
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument(
        "--sizes",
        default="demo,mid,paper",
        help="comma list of demo (32^3@0.5), mid (64x64x48@1), paper (128x128x96@1) or "
        "XxYxZ@width; paper takes minutes per case on a CPU",
    )
    parser.add_argument("--steps", default="joint", help="comma list of R, S, D, joint")
    parser.add_argument(
        "--implementations",
        default=",".join(IMPLEMENTATIONS),
        help=f"comma list of {', '.join(IMPLEMENTATIONS)}",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--threads", default="1,2", help="comma list of torch CPU thread counts")
    parser.add_argument("--out", type=Path, default=Path("results/bench/bench.json"))


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError("options --repeats must be >= 1 and --warmup >= 0")
    threads = _threads(str(args.threads))
    select_device(args.device)
    sizes = [item.strip() for item in args.sizes.split(",") if item.strip()]
    for size in sizes:
        parse_size(size)
    report = benchmark(
        sizes=sizes,
        steps=_choices(args.steps, STEPS, "--steps"),
        implementations=_choices(args.implementations, IMPLEMENTATIONS, "--implementations"),
        device=args.device,
        threads=threads,
        repeats=args.repeats,
        warmup=args.warmup,
        progress=lambda line: print(line, flush=True),
    )
    write_json(args.out, report)
    print(format_table(report["results"], report["peaks"]))
    print(f"load average {report['load_average']}; written to {args.out}")
    return 0
