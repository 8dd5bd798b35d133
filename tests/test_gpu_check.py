"""The GPU check's CPU-side logic: it notices CPU fallbacks, and its training loop runs."""

from __future__ import annotations

import builtins
import json
import subprocess
import sys

import pytest
import torch

from deeprs import gpu_check
from deeprs.gpu_check import CpuOpWatcher, GpuCheckError, misplaced_state

META = torch.device("meta")


def test_watcher_names_operations_that_ran_on_the_cpu():
    with CpuOpWatcher(META) as watcher:
        on_device = torch.ones(3, device=META) * 2
        scalar = torch.tensor(2.0) * 3  # a CPU scalar is not a fallback,
        drawn = torch.rand(1, generator=torch.Generator().manual_seed(0))  # nor a seeded draw
    assert on_device.device == META and scalar.dim() == 0 and drawn.numel() == 1
    assert watcher.fallbacks == []
    with CpuOpWatcher(META) as watcher:
        torch.ones(3, device=META) + torch.ones(3, device=META)
        torch.ones(4) + 1
    assert watcher.fallbacks
    assert all("cpu" in line for line in watcher.fallbacks)
    assert any("aten.add" in line for line in watcher.fallbacks)


def test_misplaced_state_names_parameters_gradients_and_optimiser_state():
    network = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    optimizer = torch.optim.Adam(network.parameters())
    network(torch.rand(4, 3)).sum().backward()
    optimizer.step()
    assert misplaced_state([network], [optimizer], torch.device("cpu")) == []
    found = misplaced_state([None, network], [optimizer], META)
    assert "network 1 0.weight on cpu" in found
    assert "network 1 0.weight.grad on cpu" in found
    assert any(line.startswith("Adam state exp_avg on cpu") for line in found)


def test_a_fallback_in_the_training_loop_fails_the_check(monkeypatch):
    """Expecting another device than the one the step runs on, every op is a fallback."""
    monkeypatch.setattr(gpu_check, "CpuOpWatcher", lambda device: CpuOpWatcher(META))
    with pytest.raises(GpuCheckError, match=r"operation\(s\) or tensor\(s\) off cpu: aten\."):
        gpu_check.train_once((16, 16, 16), 0.25, 2, 0, torch.device("cpu"))


def test_dry_run_on_the_cpu_trains_twice_identically(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    arguments = ["--device", "cpu", "--shape", "16x16x16", "--width", "0.25"]
    arguments += ["--iterations", "3", "--bench-sizes", "", "--out", str(out)]
    assert gpu_check.main(arguments) == 0
    report = json.loads(out.read_text())
    first, second = report["training"]
    assert first["seconds_per_iteration"] > 0
    assert len(first["dice_per_class"]) == gpu_check.NUM_CLASSES - 1
    assert 0.0 <= first["mean_dice"] <= 1.0
    # On the CPU at a fixed thread count training is deterministic: no spread at all.
    assert first["dice_per_class"] == second["dice_per_class"]
    assert report["dice_spread"] == 0.0
    printed = capsys.readouterr().out
    assert "dry run on cpu" in printed and "s/iteration" in printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_check_fails_loudly(tmp_path, capsys):
    status = gpu_check.main(["--bench-sizes", "", "--out", str(tmp_path / "g.json")])
    assert status == 1
    assert "GPU CHECK FAILED: no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "g.json").exists()


def test_bad_shape_is_one_clear_line(tmp_path, capsys):
    arguments = ["--device", "cpu", "--shape", "16x16", "--bench-sizes", ""]
    assert gpu_check.main([*arguments, "--out", str(tmp_path / "g.json")]) == 2
    assert "option --shape: '16x16' must be XxYxZ, multiples of 16" in capsys.readouterr().err


def test_a_module_the_gpu_machine_lacks_is_named(monkeypatch, tmp_path, capsys):
    """The GPU machine has torch but maybe not every import of the training code."""
    real_import = builtins.__import__

    def without_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ModuleNotFoundError("No module named 'pandas'", name="pandas")
        return real_import(name, *args, **kwargs)

    for module in ("deeprs.train.trainer", "deeprs.train.history"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setattr(builtins, "__import__", without_pandas)
    arguments = ["--device", "cpu", "--bench-sizes", "", "--shape", "16x16x16", "--iterations", "2"]
    arguments += ["--out", str(tmp_path / "g.json")]
    assert gpu_check.main(arguments) == 1
    assert (
        "GPU CHECK FAILED: the training code needs the module 'pandas'" in capsys.readouterr().err
    )


def test_the_training_code_imports_without_what_the_gpu_machine_lacks():
    """The GPU machine has torch, numpy, scipy and pandas only: the trainer, the bench and the
    check import none of tqdm, matplotlib, seaborn, nibabel, SimpleITK or snakemake."""
    code = (
        "import sys\n"
        "for name in ('tqdm', 'matplotlib', 'seaborn', 'nibabel', 'SimpleITK', 'snakemake'):\n"
        "    sys.modules[name] = None\n"
        "import deeprs.gpu_check, deeprs.train.trainer, deeprs.bench\n"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
