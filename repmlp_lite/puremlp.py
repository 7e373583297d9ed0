"""The pure-MLP network of the paper's Table 1 / Fig. 3 (CIFAR-10, 32x32) and its variants.

Layout (:func:`pure_mlp`): a stem "FC" (1x1 conv, 3 -> C1) + BN + ReLU, then three stages at 32, 16
and 8 pixels with C = 16, 32, 64 channels, 2x2 max-pool between them. A stage is

    mixer, FC, mixer, FC

where each FC is a 1x1 conv + BN + ReLU; the last FC of a stage widens to the next stage's C. The
mixer is a RepMLP block (``g = 2``, ``h = w = 8``, local perceptron K = 1, 3, 5, 7, FC1 reduction 1)
+ ReLU. Head: global average pool, FC(512) + BN + ReLU (a :class:`~repmlp_lite.layers.LinearBNLayer`,
whose merge folds the BN into the FC), FC(10).

Fig. 3's caption has the last layer of a stage widen the channels, and the counts confirm it: the
table's 22.41M parameters and 52.8M FLOPs come out only with the widening FC at the *end* of each stage.
They also decide what the paper leaves open (Sec. 4.1 names no kernel sizes): its 118.9M FLOPs before
conversion come out only with the four kernel sizes 1, 3, 5, 7 of Fig. 1's example (not the ImageNet
nets' 1, 3, 5).

The variants of Table 1 swap the mixer (``mixer=``): "repmlp" (rows Pure MLP, A, B with
``reparam_conv_k=()``, C with ``global_perceptron=False``), "fc3_conv9" (row D: FC3 replaced by a
9x9 conv on each partition, global perceptron kept), "conv9" (row E: the whole RepMLP replaced by a
9x9 conv), "conv3" with C = 32, 64, 128 (the Wide ConvNet).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_positive
from .block import GlobalPerceptron, RepMLPBlock, partition, unpartition
from .layers import ConvBNLayer, LinearBNLayer, conv_bn_relu
from .zoo import register_model

MIXERS = ("repmlp", "fc3_conv9", "conv9", "conv3")


class PartitionConvBlock(nn.Module):
    """Row D of Table 1: a RepMLP block whose FC3 is a ``K x K`` grouped conv (+ BN) on each partition.

    ``(N, C, H, W) -> (N, C, H, W)``: global perceptron as in :class:`~repmlp_lite.block.RepMLPBlock`,
    then the conv on the ``h x w`` partitions (zero padding at each partition's border). It has no
    weights of its own to merge: :func:`~repmlp_lite.reparameterize.reparameterize_model` merges its
    conv + BN and its global perceptron.
    """

    def __init__(self, channels: int, H: int, W: int, h: int, w: int, groups: int, kernel_size: int = 9):
        super().__init__()
        self.h, self.w = h, w
        self.global_perceptron = (
            GlobalPerceptron(channels, H // h, W // w, h, w, fc1_fc2_reduction=1) if (H, W) != (h, w) else None
        )
        self.conv = ConvBNLayer(channels, channels, kernel_size, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        if self.global_perceptron is not None:
            v = self.global_perceptron(x)  # (N, C, H/h, W/w): one value per partition and channel
            x = x + v.repeat_interleave(self.h, 2).repeat_interleave(self.w, 3)
        return unpartition(self.conv(partition(x, self.h, self.w)), n, height, width)


def _mixer(kind: str, channels: int, size: int, h: int, groups: int, reparam_conv_k: Sequence[int],
           global_perceptron: bool) -> nn.Module:
    """One spatial mixer of a stage (+ ReLU), on ``size x size`` maps."""
    if kind == "repmlp":
        block: nn.Module = RepMLPBlock(channels, channels, size, size, h, h, groups, 1, tuple(reparam_conv_k),
                                       global_perceptron)
        return nn.Sequential(block, nn.ReLU(inplace=True))
    if kind == "fc3_conv9":
        return nn.Sequential(PartitionConvBlock(channels, size, size, h, h, groups), nn.ReLU(inplace=True))
    if kind == "conv9":
        return ConvBNLayer(channels, channels, 9, act=nn.ReLU(inplace=True), groups=groups)
    return conv_bn_relu(channels, channels, 3)


def pure_mlp(
    num_classes: int = 10,
    channels: Sequence[int] = (16, 32, 64),
    mixer: str = "repmlp",
    h: int = 8,
    groups: int = 2,
    reparam_conv_k: Sequence[int] = (1, 3, 5, 7),
    global_perceptron: bool = True,
) -> nn.Sequential:
    """The Table 1 network on ``(N, 3, 32, 32)`` images -> ``(N, num_classes)`` (module docstring)."""
    if mixer not in MIXERS:
        raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")
    if len(channels) != 3:
        raise ValueError(f"channels must give the three stages' widths, got {tuple(channels)}")
    check_positive("num_classes", num_classes)
    layers: list[nn.Module] = [conv_bn_relu(3, channels[0], 1)]
    for i, (c, size) in enumerate(zip(channels, (32, 16, 8))):
        if i:
            layers.append(nn.MaxPool2d(2))
        wider = channels[min(i + 1, 2)]
        layers += [
            _mixer(mixer, c, size, h, groups, reparam_conv_k, global_perceptron),
            conv_bn_relu(c, c, 1),
            _mixer(mixer, c, size, h, groups, reparam_conv_k, global_perceptron),
            conv_bn_relu(c, wider, 1),
        ]
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), LinearBNLayer(channels[2], 512, act=nn.ReLU(inplace=True)),
            nn.Linear(512, num_classes)]
    return nn.Sequential(*layers, *head)


@register_model("repmlp_pure_mlp_cifar")
def repmlp_pure_mlp_cifar(
    num_classes: int = 10,
    channels: Sequence[int] = (16, 32, 64),
    mixer: str = "repmlp",
    reparam_conv_k: Sequence[int] = (1, 3, 5, 7),
    global_perceptron: bool = True,
) -> nn.Sequential:
    """Table 1's pure MLP (22.41M parameters, 52.8M FLOPs deployed) and the variants of its rows A to E
    (:func:`pure_mlp`, with the table's ``h = 8`` and ``g = 2``)."""
    return pure_mlp(num_classes, channels, mixer, reparam_conv_k=reparam_conv_k, global_perceptron=global_perceptron)


@register_model("wide_convnet_cifar")
def wide_convnet_cifar(num_classes: int = 10) -> nn.Sequential:
    """Table 1's Wide ConvNet baseline: 3x3 convs for the RepMLPs, C = 32, 64, 128 (0.50M, 65.1M)."""
    return pure_mlp(num_classes, channels=(32, 64, 128), mixer="conv3")
