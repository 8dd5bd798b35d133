"""Networks: shapes, initialisation, width, rebuild from config, size errors; D learns."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from deeprs.losses import discriminator_loss, reference_image
from deeprs.nets import NETWORKS, PixelDiscriminator, VoxelMorph2, build_network
from deeprs.nets.blocks import Conv3d, scale_channels

# Small constructor arguments per kind, so that the shape tests stay fast on one thread.
SMALL = {
    "voxelmorph2": dict(width=0.25),
    "unet3d": dict(in_channels=1, out_channels=4, features=(8, 16, 32), width=0.5),
    "discriminator": dict(width=0.5, features=(8, 16, 32)),
    "fcn3d": dict(in_channels=1, out_channels=4, width=0.25),
    "vnet": dict(in_channels=1, out_channels=4, width=0.25),
}
OUT_CHANNELS = {"voxelmorph2": 3, "unet3d": 4, "discriminator": 1, "fcn3d": 4, "vnet": 4}
PAIRED = {"voxelmorph2", "discriminator"}  # forward(image, fixed) instead of forward(x)


def _run(net: torch.nn.Module, kind: str, shape: tuple[int, int, int]) -> torch.Tensor:
    x = torch.rand(1, 1, *shape)
    return net(x, torch.rand_like(x)) if kind in PAIRED else net(x)


def test_registry_holds_every_kind() -> None:
    assert set(NETWORKS) == set(SMALL)


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_output_shapes_for_several_input_sizes(kind: str) -> None:
    torch.manual_seed(0)
    net = build_network(kind, **SMALL[kind])
    divisor = net.size_divisor
    # Nets that pool four times need more than one bottleneck voxel for instance norm.
    sizes = [(32, 32, 32), (16, 32, 48)] if divisor == 16 else [(16, 16, 16), (32, 16, 48)]
    if divisor == 1:
        sizes.append((9, 13, 11))  # VoxelMorph-2 up-samples to the skip sizes: any size
    for shape in sizes:
        with torch.no_grad():
            output = _run(net, kind, shape)
        assert output.shape == (1, OUT_CHANNELS[kind], *shape)
        assert torch.isfinite(output).all()


def test_voxelmorph_starts_near_identity_and_has_the_paper_layout() -> None:
    torch.manual_seed(0)
    net = VoxelMorph2()
    with torch.no_grad():
        displacement = _run(net, "voxelmorph2", (16, 16, 16))
    assert displacement.abs().max() < 1e-3
    # 3x3x3 conv parameters (27 * in * out + out) of VoxelMorph-2, counted by hand:
    # encoder 2->16, 16->32, 32->32, 32->32; decoder 32->32, 64->32, 64->32, 48->32,
    # 32->32, 34->16, 16->16; flow 16->3.
    layers = [(2, 16), (16, 32), (32, 32), (32, 32), (32, 32), (64, 32), (64, 32), (48, 32)]
    layers += [(32, 32), (34, 16), (16, 16), (16, 3)]
    expected = sum(27 * c_in * c_out + c_out for c_in, c_out in layers)
    assert sum(p.numel() for p in net.parameters()) == expected


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_width_scales_parameter_counts(kind: str) -> None:
    args = {key: value for key, value in SMALL[kind].items() if key != "width"}
    counts = [
        sum(p.numel() for p in build_network(kind, **args, width=width).parameters())
        for width in (0.25, 0.5, 1.0)
    ]
    assert counts[0] < counts[1] < counts[2]


def test_scale_channels_rounds_and_keeps_at_least_four() -> None:
    assert scale_channels((16, 32, 64), 0.5) == [8, 16, 32]
    assert scale_channels((16, 32), 0.1) == [4, 4]
    assert scale_channels((16,), 1.3) == [21]
    with pytest.raises(ValueError, match="width must be > 0"):
        scale_channels((16,), 0.0)


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_build_network_round_trips_through_config(kind: str) -> None:
    torch.manual_seed(0)
    net = build_network(kind, **SMALL[kind])
    rebuilt = build_network(kind, **net.config)
    assert rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict())
    net.eval()
    rebuilt.eval()
    torch.manual_seed(1)
    x = torch.rand(1, 1, 32, 32, 16)
    with torch.no_grad():
        if kind in PAIRED:
            assert torch.equal(net(x, x.flip(2)), rebuilt(x, x.flip(2)))
        else:
            assert torch.equal(net(x), rebuilt(x))


def test_bad_sizes_and_kinds_get_clear_errors() -> None:
    unet = build_network("unet3d", **SMALL["unet3d"])
    with pytest.raises(
        ValueError, match=r"divisible by 4, got \(18, 16, 16\): pad 18 to 20 or crop it to 16$"
    ):
        unet(torch.rand(1, 1, 18, 16, 16))
    vnet = build_network("vnet", **SMALL["vnet"])
    with pytest.raises(
        ValueError, match=r"divisible by 16, got \(16, 30, 16\): pad 30 to 32 or crop it to 16$"
    ):
        vnet(torch.rand(1, 1, 16, 30, 16))
    with pytest.raises(ValueError, match=r"unknown network kind 'unet'; choose one of"):
        build_network("unet")
    with pytest.raises(ValueError, match="needs 4 encoder and 7 decoder widths, got 4 and 6"):
        VoxelMorph2(decoder=(32, 32, 32, 32, 16, 16))
    with pytest.raises(ValueError, match="norm must be one of"):
        build_network("unet3d", in_channels=1, out_channels=2, norm="layer")


def _toy_pair(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random fixed image and a moving image shifted by 2-4 voxels along one axis."""
    noise = torch.rand(1, 1, 16, 16, 16, generator=generator)
    fixed = F.avg_pool3d(F.pad(noise, (1,) * 6, mode="circular"), 3, stride=1)
    fixed = (fixed - fixed.mean()) / fixed.std()
    shift = int(torch.randint(2, 5, (1,), generator=generator))
    axis = 2 + int(torch.randint(0, 3, (1,), generator=generator))
    return torch.roll(fixed, shifts=shift, dims=axis), fixed


def test_discriminator_learns_to_separate_reference_from_misaligned_pairs() -> None:
    torch.manual_seed(0)
    discriminator = PixelDiscriminator(width=0.25, features=(16, 32))
    optimiser = torch.optim.Adam(discriminator.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(40):
        moving, fixed = _toy_pair(generator)
        reference = reference_image(moving, fixed, beta=0.2)
        loss = discriminator_loss(discriminator(reference, fixed), discriminator(moving, fixed))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5

    held_out = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for _ in range(3):
            moving, fixed = _toy_pair(held_out)
            aligned = discriminator.confidence(reference_image(moving, fixed, 0.2), fixed)
            misaligned = discriminator.confidence(moving, fixed)
            assert aligned.mean() > misaligned.mean() + 0.5


def _bf16_gradients(
    module: torch.nn.Module, forward: Callable[[], torch.Tensor]
) -> list[torch.Tensor]:
    module.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = forward()
    output.float().square().sum().backward()
    return [p.grad.clone() for p in module.parameters()]


def _assert_finite_and_repeatable(runs: list[list[torch.Tensor]]) -> None:
    for run in runs:
        assert all(torch.isfinite(g).all() for g in run)
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run, strict=True))


@pytest.mark.parametrize(
    ("shape", "kernel", "stride"),
    [((2, 8, 8), 3, 1), ((2, 2, 4), 3, 1), ((4, 4, 1), 3, 2), ((4, 8, 8), 5, 1), ((8, 1, 8), 5, 1)],
)
def test_conv_is_finite_and_repeatable_under_cpu_bf16_on_thin_volumes(
    shape, kernel, stride
) -> None:
    """oneDNN's bf16 gradients on volumes thinner than the kernel were NaN or garbage."""
    torch.manual_seed(0)
    conv = Conv3d(32, 16, kernel_size=kernel, padding=kernel // 2, stride=stride)
    x = torch.randn(1, 32, *shape)
    _assert_finite_and_repeatable([_bf16_gradients(conv, lambda: conv(x)) for _ in range(4)])


def test_networks_train_repeatably_under_cpu_bf16() -> None:
    """A 32-slice volume reaches a 2-slice bottleneck in VoxelMorph-2 and the U-Nets."""
    torch.manual_seed(0)
    moving, fixed = torch.rand(2, 1, 1, 32, 16, 16)
    registration = build_network("voxelmorph2", width=0.5)
    _assert_finite_and_repeatable(
        [_bf16_gradients(registration, lambda: registration(moving, fixed)) for _ in range(3)]
    )
    for kind in ("unet3d", "vnet", "fcn3d"):
        segmentation = build_network(kind, in_channels=1, out_channels=3, width=0.25)
        _assert_finite_and_repeatable(
            [_bf16_gradients(segmentation, lambda n=segmentation: n(moving)) for _ in range(3)]
        )
