"""Networks: shapes, initialisation, width, rebuild from config, size errors; D learns."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from deeprs.losses import discriminator_loss, reference_image
from deeprs.nets import NETWORKS, PixelDiscriminator, VoxelMorph2, build_network
from deeprs.nets.blocks import Conv3d, scale_channels
from deeprs.nets.spatial import integrate_velocity

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


def test_diffeomorphic_voxelmorph_integrates_the_same_network_output() -> None:
    torch.manual_seed(0)
    plain = VoxelMorph2(width=0.25)
    torch.manual_seed(0)
    diffeomorphic = build_network("voxelmorph2", width=0.25, integration_steps=5)
    assert diffeomorphic.config["integration_steps"] == 5
    assert build_network("voxelmorph2", **diffeomorphic.config).integration_steps == 5
    # Same weights, so the same velocity: scale the flow layer so it is far from zero.
    for net in (plain, diffeomorphic):
        with torch.no_grad():
            net.flow.weight.mul_(3e4)
    moving, fixed = torch.rand(1, 1, 12, 16, 16), torch.rand(1, 1, 12, 16, 16)
    with torch.no_grad():
        velocity = plain(moving, fixed)
        displacement = diffeomorphic(moving, fixed)
    assert velocity.abs().max() > 0.5
    torch.testing.assert_close(displacement, integrate_velocity(velocity, 5))
    assert not torch.allclose(displacement, velocity)
    with pytest.raises(ValueError, match="integration_steps must be >= 0, got -1"):
        VoxelMorph2(integration_steps=-1)


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


def _forward_backward(
    forward: Callable[[torch.Tensor], torch.Tensor], conv: Conv3d, x: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    conv.zero_grad()
    image = x.detach().clone().requires_grad_()
    out = forward(image)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    return out.detach(), image.grad, conv.weight.grad, conv.bias.grad


@pytest.mark.parametrize(
    "shape, channels, kernel, padding",
    [
        ((32, 32, 32), 16, 3, 1),
        ((16, 64, 64), 8, 3, 1),
        ((15, 20, 13), 4, 3, 1),
        ((12, 12, 11), 8, 3, 0),
        ((8, 24, 24), 8, (1, 3, 3), (0, 1, 1)),
    ],
)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_conv_split_for_onednn_computes_what_pytorch_computes(
    shape: tuple[int, int, int],
    channels: int,
    kernel: int | tuple[int, ...],
    padding: int | tuple[int, ...],
    layout: torch.memory_format,
) -> None:
    """The two-halves batch (Conv3d.forward) gives the convolution and its gradients as a
    float64 convolution does, as closely as PyTorch's own float32 kernel, in either layout."""
    torch.manual_seed(0)
    conv = Conv3d(channels, 2 * channels, kernel, padding=padding).to(memory_format=layout)
    x = torch.randn(1, channels, *shape).contiguous(memory_format=layout)
    assert conv._split_axis(x) is not None
    ours = _forward_backward(conv, conv, x)
    plain = _forward_backward(lambda v: torch.nn.Conv3d.forward(conv, v), conv, x)
    exact = _forward_backward(conv.double(), conv, x.double())
    for name, got, pytorch, want in zip(
        ("output", "input grad", "weight grad", "bias grad"), ours, plain, exact, strict=True
    ):
        assert got.shape == want.shape, name
        bar = 2e-6 * want.abs().max().item()
        assert (pytorch.double() - want).abs().max() <= 10 * bar, name  # the bar itself
        assert (got.double() - want).abs().max() <= 10 * bar, name


def test_conv_split_is_only_used_where_pytorch_would_take_its_reference_kernel() -> None:
    conv = Conv3d(8, 8, 3, padding=1)
    assert conv._split_axis(torch.zeros(1, 8, 16, 24, 20)) == 3  # the longest axis
    assert conv._split_axis(torch.zeros(1, 8, 16, 23, 20)) == 4  # 23 cannot be halved
    for x in (
        torch.zeros(2, 8, 16, 16, 16),  # a batch already goes to oneDNN
        torch.zeros(1, 8, 48, 64, 64),  # so does a large volume (C * D * H > 20480)
        torch.zeros(1, 8, 4, 4, 4),  # tiny: the reference kernel is faster
        torch.zeros(1, 8, 16, 16, 16, dtype=torch.float64),
        torch.zeros(1, 8, 15, 15, 15),  # no axis of even length
    ):
        assert conv._split_axis(x) is None, tuple(x.shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv._split_axis(torch.zeros(1, 8, 16, 16, 16)) is None
    strided = Conv3d(8, 8, 3, stride=2, padding=1)
    pointwise = Conv3d(8, 8, 1)
    for layer in (strided, pointwise):
        assert layer._split_axis(torch.zeros(1, 8, 16, 16, 16)) is None
