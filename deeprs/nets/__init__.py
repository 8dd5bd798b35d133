"""The networks of DeepRS and its baselines, and the spatial transformer.

Every network keeps its constructor arguments in ``self.config`` so that a checkpoint can
rebuild it with ``build_network(kind, **config)``, and a ``size_divisor``: the multiple
that input sizes must be padded to.
"""

from __future__ import annotations

from torch import nn

from deeprs.nets.discriminator import PixelDiscriminator
from deeprs.nets.fcn import FCN3D
from deeprs.nets.registration import VoxelMorph2
from deeprs.nets.unet import UNet3D
from deeprs.nets.vnet import VNet

NETWORKS: dict[str, type[nn.Module]] = {
    "voxelmorph2": VoxelMorph2,
    "unet3d": UNet3D,
    "discriminator": PixelDiscriminator,
    "fcn3d": FCN3D,
    "vnet": VNet,
}


def build_network(kind: str, **args: object) -> nn.Module:
    """Construct the network ``kind`` (a key of :data:`NETWORKS`) from its arguments."""
    if kind not in NETWORKS:
        raise ValueError(f"unknown network kind {kind!r}; choose one of {sorted(NETWORKS)}")
    return NETWORKS[kind](**args)


__all__ = [
    "FCN3D",
    "NETWORKS",
    "PixelDiscriminator",
    "UNet3D",
    "VNet",
    "VoxelMorph2",
    "build_network",
]
