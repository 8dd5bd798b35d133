"""Interrupted jobs: a training killed halfway continues where it stopped, a file killed
while being written never looks finished, and a NaN loss keeps the last good checkpoint.

Every run here is the real ``deeprs train`` command in its own process, killed with a real
signal, on a tiny preprocessed cohort in the format of ``docs/architecture.md``.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_trainer import write_cohort

from deeprs.cli import main
from deeprs.train.checkpoint import read_payload
from deeprs.train.sampling import EpochSampler, training_pairs
from deeprs.train.trainer import CHECKPOINT_FILE, MODEL_FILE

ITERATIONS = 24
SEED = 5
OUTPUTS = {MODEL_FILE, "losses.csv", "losses.png", "validation.csv"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """manifest.json and split.json of 2 moving, 2 fixed and 2 test cases of 16^3 voxels."""
    folder = tmp_path_factory.mktemp("cohort")
    write_cohort(folder, (16, 16, 16), {"train_moving": 2, "train_fixed": 2, "test": 2})
    return folder


def train_arguments(
    cohort: Path,
    out_dir: Path,
    method: str = "deeprs",
    iterations: int = ITERATIONS,
    checkpoint_every: int = 2,
) -> list[str]:
    arguments = ["train", "--method", method, "--manifest", str(cohort / "manifest.json")]
    arguments += ["--split", str(cohort / "split.json"), "--out-dir", str(out_dir)]
    settings = {
        "iterations": iterations,
        "width": 0.25,
        "checkpoint_every": checkpoint_every,
        "seed": SEED,
    }
    arguments += ["--settings", json.dumps(settings)]
    return [*arguments, "--device", "cpu", "--threads", "1"]


def start(arguments: list[str], log: Path, prelude: str = "") -> subprocess.Popen:
    """``deeprs <arguments>`` in a new process (after ``prelude``), its output to ``log``."""
    code = f"import sys\n{prelude}\nfrom deeprs.cli import main\nsys.exit(main(sys.argv[1:]))"
    with open(log, "w") as handle:
        return subprocess.Popen(
            [sys.executable, "-c", code, *arguments], stdout=handle, stderr=subprocess.STDOUT
        )


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.01)


def weights(model_file: Path) -> dict[str, torch.Tensor]:
    models = read_payload(model_file, "model file")["models"]
    return {
        f"{key}.{name}": tensor
        for key, record in models.items()
        for name, tensor in record["state_dict"].items()
    }


def assert_same_weights(model_file: Path, reference_file: Path) -> None:
    ours, reference = weights(model_file), weights(reference_file)
    assert ours.keys() == reference.keys()
    different = [name for name in ours if not torch.equal(ours[name], reference[name])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"


def assert_finished(out_dir: Path, reference_dir: Path) -> None:
    """The rerun's outputs are those of one uninterrupted run: weights, iterations, losses."""
    visible = {path.name for path in out_dir.iterdir() if not path.name.startswith(".")}
    assert visible == OUTPUTS
    assert read_payload(out_dir / MODEL_FILE, "model file")["iteration"] == ITERATIONS
    losses = pd.read_csv(out_dir / "losses.csv")
    assert losses["iteration"].tolist() == list(range(ITERATIONS))
    pd.testing.assert_frame_equal(losses, pd.read_csv(reference_dir / "losses.csv"))
    pd.testing.assert_frame_equal(
        pd.read_csv(out_dir / "validation.csv"), pd.read_csv(reference_dir / "validation.csv")
    )
    assert_same_weights(out_dir / MODEL_FILE, reference_dir / MODEL_FILE)
    assert (out_dir / MODEL_FILE).read_bytes() == (reference_dir / MODEL_FILE).read_bytes()


@pytest.fixture(scope="module")
def uninterrupted(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("uninterrupted")
    assert main(train_arguments(cohort, out_dir)) == 0
    return out_dir


@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_training_resumes_from_its_checkpoint(
    cohort: Path, uninterrupted: Path, tmp_path: Path, sent: signal.Signals
) -> None:
    out_dir = tmp_path / "run"
    checkpoint = out_dir / CHECKPOINT_FILE
    job = start(train_arguments(cohort, out_dir), tmp_path / "first.log")
    wait_for(checkpoint.exists, job, "first checkpoint")
    job.send_signal(sent)
    assert job.wait(timeout=60) == -sent
    assert not (out_dir / MODEL_FILE).exists()
    saved_at = read_payload(checkpoint, "checkpoint")["iteration"]
    assert 2 <= saved_at < ITERATIONS and saved_at % 2 == 0

    rerun = start(train_arguments(cohort, out_dir), tmp_path / "rerun.log")
    assert rerun.wait(timeout=600) == 0
    log = (tmp_path / "rerun.log").read_text()
    assert f"resuming deeprs on fold_0 from {checkpoint} at iteration {saved_at}" in log
    assert f"trained deeprs on fold_0: {ITERATIONS - saved_at} iterations in" in log
    assert not checkpoint.exists()
    assert_finished(out_dir, uninterrupted)


# Runs inside the training process: the write of one file stops halfway, as a job killed
# during a write would leave it; the test then kills the process.
STALL_WRITE = """
import time
from pathlib import Path
import torch
real_save = torch.save
writes = {{}}
def stalled_save(payload, handle, *args, **kwargs):
    real_save(payload, handle, *args, **kwargs)
    path = Path(handle.name)
    if path.name.startswith(".{target}."):
        writes[path.name] = writes.get(path.name, 0) + 1
        if len(writes) == {nth}:
            handle.flush()
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            path.with_name("stalled").write_text(path.name)
            time.sleep(600)
torch.save = stalled_save
"""


@pytest.mark.parametrize(
    ("target", "nth", "kept_iteration"),
    [(CHECKPOINT_FILE, 2, 2), (MODEL_FILE, 1, ITERATIONS - 2)],
    ids=["checkpoint", "model"],
)
def test_job_killed_while_writing_leaves_no_final_named_file(
    cohort: Path,
    uninterrupted: Path,
    tmp_path: Path,
    target: str,
    nth: int,
    kept_iteration: int,
) -> None:
    """Killed halfway through writing the 2nd checkpoint or the model: the half-written file
    stays under its hidden temporary name, the previous checkpoint is intact, and a rerun
    removes the leftover and finishes with the weights of an uninterrupted run."""
    out_dir = tmp_path / "run"
    prelude = STALL_WRITE.format(target=target, nth=nth)
    job = start(train_arguments(cohort, out_dir), tmp_path / "first.log", prelude)
    wait_for((out_dir / "stalled").exists, job, "stalled write")
    job.kill()
    job.wait(timeout=60)
    partial = out_dir / (out_dir / "stalled").read_text()
    (out_dir / "stalled").unlink()
    assert partial.exists() and partial.stat().st_size > 0
    assert not (out_dir / MODEL_FILE).exists()
    assert read_payload(out_dir / CHECKPOINT_FILE, "checkpoint")["iteration"] == kept_iteration

    assert main(train_arguments(cohort, out_dir)) == 0
    assert_finished(out_dir, uninterrupted)
    assert not partial.exists()


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A NaN voxel in one preprocessed image: the first pair that uses it stops the run."""
    data = Path(shutil.copytree(cohort, tmp_path / "cohort"))
    moving, fixed = ["train_moving_0", "train_moving_1"], ["train_fixed_0", "train_fixed_1"]
    order = EpochSampler(training_pairs(moving, fixed), SEED)
    first_use = {case: next(i for i in range(4) if order.item(i)[1] == case) for case in fixed}
    broken = max(first_use, key=first_use.__getitem__)
    stops_at = first_use[broken]
    assert stops_at >= 2, "pick a seed whose first pairs share one fixed image"
    image = np.load(data / "images" / f"{broken}.npy")
    image[4, 5, 6] = np.nan
    np.save(data / "images" / f"{broken}.npy", image)

    out_dir = tmp_path / "run"
    arguments = train_arguments(data, out_dir, method="voxelmorph2", checkpoint_every=1)
    assert main(arguments) == 2
    checkpoint = out_dir / CHECKPOINT_FILE
    # Above the error line: the progress bar (tqdm writes to stderr).
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"deeprs train: error: training voxelmorph2 on fold_0 stopped at iteration {stops_at}: "
        f"loss term 'reg_cc' is nan; the last good checkpoint '{checkpoint}' is kept; lower "
        "train.lr or check the input images"
    )
    state = read_payload(checkpoint, "checkpoint")
    assert state["iteration"] == stops_at
    assert all(torch.isfinite(t).all() for t in weights_of(state))
    assert not (out_dir / MODEL_FILE).exists()


def weights_of(state: dict) -> list[torch.Tensor]:
    return [t for record in state["models"].values() for t in record["state_dict"].values()]


def test_shape_the_networks_cannot_take_is_padded_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Preprocessed to 20 x 24 x 12 voxels (not multiples of 16): training pads and says so,
    evaluation crops back, and the metrics cover the original grid."""
    cohort = tmp_path / "cohort"
    write_cohort(cohort, (12, 24, 20), {"train_moving": 2, "train_fixed": 1, "test": 2})
    out_dir = tmp_path / "run"
    arguments = train_arguments(cohort, out_dir, method="unet3d", iterations=2)
    with caplog.at_level("INFO"):
        assert main(arguments) == 0
    assert (
        "padding the training volumes from (12, 24, 20) to (16, 32, 32) (z, y, x): the networks "
        "need multiples of 16" in caplog.text
    )
    metrics = tmp_path / "metrics.csv"
    evaluate = ["evaluate", "--method", "unet3d", "--split", str(cohort / "split.json")]
    evaluate += ["--manifest", str(cohort / "manifest.json"), "--model", str(out_dir / MODEL_FILE)]
    assert main([*evaluate, "--out", str(metrics), "--device", "cpu"]) == 0
    frame = pd.read_csv(metrics)
    assert set(frame["sample"]) == {"test_0", "test_1"}
    assert frame["dice"].between(0, 1).all()
