"""deeprs bench: the reference computes what our trainer computes, and the bench writes its JSON."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from deeprs import bench_reference as reference
from deeprs import perf
from deeprs.bench import WEIGHTS, counted_flops, parse_size, synthetic_pair
from deeprs.cli import main as deeprs_main
from deeprs.losses import local_ncc_loss, smoothness_loss
from deeprs.methods import get_method
from deeprs.nets import build_network
from deeprs.terms import terms_of
from deeprs.train.steps import (
    Pair,
    StepContext,
    discriminator_step,
    joint_step,
    registration_step,
    segmentation_step,
)
from deeprs.train.trainer import TrainSettings, build_networks

SHAPE_ZYX = (16, 16, 16)
NUM_CLASSES = 4
SEED = 3


def _parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _assert_same_gradients(mine: torch.nn.Module, other: torch.nn.Module) -> None:
    """The gradients left by the last update agree to float rounding (the optimisers then
    normalise them: RMSprop's first step moves every weight by about lr * sqrt(10), so
    comparing weights would magnify rounding in near-zero gradients)."""
    pairs = list(zip(mine.parameters(), other.parameters(), strict=True))
    assert all(a.grad is not None and b.grad is not None for a, b in pairs)
    scale = max(float(a.grad.abs().max()) for a, _ in pairs)
    assert scale > 0
    for a, b in pairs:
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4 * scale)


def test_one_convolution_ncc_equals_the_separable_ncc():
    moving, _, fixed = synthetic_pair((16, 24, 20), NUM_CLASSES, SEED)
    warped = 0.6 * moving + 0.4 * fixed
    ours = local_ncc_loss(warped, fixed)
    theirs = reference.ncc_loss(warped, fixed)
    assert -1.0 < float(ours) < -0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_voxelmorph_gradient_loss_equals_ours():
    flow = torch.randn(1, 3, 8, 10, 12, generator=torch.Generator().manual_seed(SEED))
    torch.testing.assert_close(smoothness_loss(flow), reference.gradient_l2_loss(flow))


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_reference_networks_have_the_size_of_ours(width):
    """Same layers, hence the same multiply-adds: the speed ratio compares execution only."""
    size = (32, 48, 48)
    assert _parameters(reference.ReferenceVoxelMorph2(size, width)) == _parameters(
        build_network("voxelmorph2", width=width)
    )
    assert _parameters(reference.ReferenceUNet3D(1, 8, width)) == _parameters(
        build_network("unet3d", in_channels=1, out_channels=8, width=width)
    )
    assert _parameters(reference.ReferenceDiscriminator(width)) == _parameters(
        build_network("discriminator", width=width)
    )
    moving = torch.rand(1, 1, *size)
    assert reference.ReferenceVoxelMorph2(size, width)(moving, moving).shape == (1, 3, *size)


@pytest.mark.parametrize("separable_ncc", [False, True], ids=["voxelmorph-ref", "plain-fp32"])
def test_reference_iteration_computes_our_losses_and_updates(separable_ncc):
    """On the same networks and inputs, each reference step gives our loss terms and weights."""
    method = get_method("deeprs")
    settings = TrainSettings(width=0.25, seed=SEED, weights=WEIGHTS)
    device = torch.device("cpu")
    ours, _ = build_networks(method, NUM_CLASSES, settings, device)
    # R starts near the identity, where every sampling point sits on a voxel: there the
    # trilinear warp has a kink and float rounding picks its side. A larger flow layer moves
    # the points between voxels, where the gradient is well defined.
    torch.nn.init.normal_(ours.registration.flow.weight, std=0.05)
    theirs = reference.build_reference(
        SHAPE_ZYX,
        NUM_CLASSES,
        0.25,
        device,
        WEIGHTS,
        networks=tuple(
            copy.deepcopy(net) for net in (ours.registration, ours.segmentation, ours.discriminator)
        ),
        separable_ncc=separable_ncc,
    )
    moving, label, fixed = synthetic_pair(SHAPE_ZYX, NUM_CLASSES, SEED)
    context = StepContext(method, settings.weights, NUM_CLASSES, device, torch.Generator(), 2e-4)
    context.generator.manual_seed(SEED)
    pair = Pair(moving, label, fixed, None)

    ours_r, displacement, warped = registration_step(context, ours, pair)
    theirs_r, flow, theirs_warped = reference.registration_step(theirs, moving, fixed)
    assert set(ours_r) == set(theirs_r)
    for term, value in ours_r.items():
        assert theirs_r[term] == pytest.approx(value, rel=1e-4, abs=1e-7), term
    torch.testing.assert_close(warped, theirs_warped, rtol=1e-5, atol=1e-6)
    _assert_same_gradients(ours.registration, theirs.registration)

    ours_d = discriminator_step(context, ours, pair, warped)
    theirs_d = reference.discriminator_step(theirs, moving, fixed, theirs_warped)
    assert ours_d["disc_lr_scale"] == 1.0
    assert theirs_d["disc"] == pytest.approx(ours_d["disc"], rel=1e-5)
    _assert_same_gradients(ours.discriminator, theirs.discriminator)

    alpha = float(torch.rand(1, generator=torch.Generator().manual_seed(SEED)))
    ours_s = segmentation_step(context, ours, pair, displacement.float())
    theirs_s = reference.segmentation_step(theirs, moving, label, fixed, flow, alpha)
    for term in ("seg_ce", "seg_acm"):
        assert theirs_s[term] == pytest.approx(ours_s[term], rel=1e-4), term
    _assert_same_gradients(ours.segmentation, theirs.segmentation)


@pytest.mark.parametrize("method_name", ["deeprs", "ablation_rs_drc", "deepatlas"])
def test_joint_step_equals_the_three_steps_with_one_segmentation_pass_less(method_name):
    """``joint_step`` (the trainer's iteration) computes what R, D and S's own steps compute
    one after another: the same terms and the same gradients on all three networks. Where
    S segments the fixed image for its own terms (DeepRS' ACM), R's DRC target reuses those
    logits, so S sees one image less per iteration; where it does not (R+S+DRC) nothing is
    saved. DeepAtlas reads S on the fixed image for its anatomy term."""
    method = get_method(method_name)
    settings = TrainSettings(width=0.25, seed=SEED, weights=WEIGHTS)
    device = torch.device("cpu")
    sequential, _ = build_networks(method, NUM_CLASSES, settings, device)
    torch.nn.init.normal_(sequential.registration.flow.weight, std=0.05)
    joint = copy.deepcopy(sequential)
    moving, label, fixed = synthetic_pair(SHAPE_ZYX, NUM_CLASSES, SEED)
    pair = Pair(moving, label, fixed, None)

    def context() -> StepContext:
        generator = torch.Generator().manual_seed(SEED)
        return StepContext(method, settings.weights, NUM_CLASSES, device, generator, 2e-4)

    def count_images(networks) -> list[int]:
        seen: list[int] = []
        networks.segmentation.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
        return seen

    sequential_images, joint_images = count_images(sequential), count_images(joint)
    step = context()
    expected, displacement, warped = registration_step(step, sequential, pair)
    if method.discriminator:
        expected.update(discriminator_step(step, sequential, pair, warped))
    expected.update(segmentation_step(step, sequential, pair, displacement.float()))
    got = joint_step(context(), joint, pair)

    assert set(got) == set(expected)
    for term, value in expected.items():
        assert got[term] == pytest.approx(value, rel=1e-5, abs=1e-7), term
    for name in ("registration", "segmentation", "discriminator"):
        if getattr(sequential, name) is not None:
            _assert_same_gradients(getattr(joint, name), getattr(sequential, name))
    reuses = "fixed" in {t.segmentation_input for t in terms_of("segmentation", method.terms)}
    assert sum(joint_images) == sum(sequential_images) - (1 if reuses else 0)
    assert reuses == (method_name != "ablation_rs_drc")


def test_bench_writes_its_table_as_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = deeprs_main(
        [
            "bench",
            "--sizes",
            "16x16x16@0.25",
            "--steps",
            "D",
            "--implementations",
            "ours,plain-fp32",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    report = json.loads(out.read_text())
    assert {"torch", "device", "threads", "load_average", "results", "ratios", "peaks"} <= set(
        report
    )
    assert report["device"] == "cpu"
    cases = {(r["step"], r["implementation"], r["threads"]) for r in report["results"]}
    assert cases == {("D", "ours", 1), ("D", "plain-fp32", 1)}
    (peak,) = report["peaks"]
    assert set(peak["gemm"]) == {"fp32", "bf16"}
    best = max(value["gflop_per_cpu_s"] for value in peak["gemm"].values())
    for result in report["results"]:
        assert len(result["times_s"]) == len(result["cpu_times_s"]) == 2
        assert result["median_s"] > 0 and result["median_cpu_s"] > 0
        assert result["voxels_per_s"] == pytest.approx(16**3 / result["median_s"])
        assert result["gflop"] > 0
        assert result["fraction_of_peak_cpu"] == pytest.approx(
            result["gflop"] / result["median_cpu_s"] / best
        )
        assert result["peak_memory_mb"] >= 0
    (ratio,) = report["ratios"]
    assert (ratio["implementation"], ratio["reference"]) == ("ours", "plain-fp32")
    assert ratio["speedup"] > 0 and ratio["speedup_cpu"] > 0
    printed = capsys.readouterr().out
    assert "GF/CPU-s" in printed and "bf16 GEMM" in printed


def test_flops_are_counted_not_estimated():
    """A 3x3x3 convolution's forward and backward: 2 * 27 * in * out per voxel, three times."""
    conv = torch.nn.Conv3d(4, 8, 3, padding=1)
    x = torch.rand(1, 4, 8, 8, 8, requires_grad=True)
    forward = 2 * 27 * 4 * 8 * 8**3
    assert counted_flops(lambda: conv(x)) == forward
    assert counted_flops(lambda: conv(x).sum().backward()) == 3 * forward


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--sizes", "17x16x16@0.25"], "every side must be a multiple of 16"),
        (["--sizes", "huge"], "bench size 'huge' is not one of demo, mid, paper"),
        (["--steps", "R,X"], "option --steps: 'R,X' must list some of R, S, D, joint"),
        (["--threads", "0"], "option --threads: '0' must list thread counts >= 1"),
        (["--threads", "two"], "option --threads: 'two' must list thread counts >= 1"),
    ],
)
def test_bench_rejects_bad_options_in_one_sentence(arguments, message, tmp_path, capsys):
    status = deeprs_main(["bench", *arguments, "--out", str(tmp_path / "b.json")])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_named_sizes_are_the_issue_sizes():
    assert parse_size("demo") == ("demo", (32, 32, 32), 0.5)
    assert parse_size("mid") == ("mid", (64, 64, 48), 1.0)
    assert parse_size("paper") == ("paper", (128, 128, 96), 1.0)


LAYOUTS = {
    "contiguous": perf.PerfOptions(channels_last=False),
    "channels_last": perf.PerfOptions(channels_last=True),
    # The large-volume choice forced at 16^3: S contiguous, R and D channels_last.
    "per_network": perf.PerfOptions(channels_last=True, contiguous_normalised_from_voxels=1),
}


def test_layouts_change_speed_not_values():
    """deeprs.perf only reorders memory: a joint iteration gives the same losses."""
    method = get_method("deeprs")
    settings = TrainSettings(width=0.25, seed=SEED, weights=WEIGHTS)
    device = torch.device("cpu")
    moving, label, fixed = synthetic_pair(SHAPE_ZYX, NUM_CLASSES, SEED)
    rows = {}
    for name, options in LAYOUTS.items():
        networks, _ = build_networks(method, NUM_CLASSES, settings, device)
        perf.prepare_networks(
            [networks.registration, networks.segmentation, networks.discriminator],
            options,
            SHAPE_ZYX,
        )
        pair = Pair(
            perf.prepare_volume(moving, options), label, perf.prepare_volume(fixed, options), None
        )
        context = StepContext(
            method, settings.weights, NUM_CLASSES, device, torch.Generator().manual_seed(SEED), 2e-4
        )
        row, displacement, warped = registration_step(context, networks, pair)
        row.update(discriminator_step(context, networks, pair, warped))
        row.update(segmentation_step(context, networks, pair, displacement))
        cl = torch.channels_last_3d
        registration_weight = networks.registration.flow.weight
        segmentation_weight = networks.segmentation.down[1][0][0].weight
        assert registration_weight.is_contiguous(memory_format=cl) == options.channels_last
        assert segmentation_weight.is_contiguous(memory_format=cl) == (name == "channels_last")
        rows[name] = row
    for name, row in rows.items():
        assert set(row) == set(rows["contiguous"])
        for term, value in rows["contiguous"].items():
            assert row[term] == pytest.approx(value, rel=1e-4, abs=1e-7), (name, term)


def test_only_instance_normalised_networks_go_contiguous_on_large_volumes():
    options = perf.PerfOptions()
    segmentation = build_network("unet3d", in_channels=2, out_channels=3, width=0.25)
    discriminator = build_network("discriminator", width=0.25)
    large, small = (48, 64, 64), (32, 32, 32)
    assert not perf.channels_last_pays(segmentation, large, options)
    assert perf.channels_last_pays(segmentation, small, options)
    assert perf.channels_last_pays(segmentation, None, options)
    assert perf.channels_last_pays(discriminator, large, options)
    perf.prepare_networks([segmentation, None], options, large)
    volume = perf.prepare_volume(torch.rand(1, 2, 16, 16, 16), options)
    assert not volume.is_contiguous()  # a two-channel channels_last volume ...
    seen = []
    segmentation.down[0].register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        segmentation(volume)
    assert seen[0].is_contiguous()  # ... reaches the contiguous network's layers contiguous
