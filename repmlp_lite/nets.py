"""The nets of the paper (Sec. 4.2, Fig. 3), small enough to train on a CPU.

* :class:`ResNetBottleneck`: 1x1 conv (C -> C/r), 3x3 conv, 1x1 conv (C/r -> C), plus the shortcut.
* :class:`RepMLPBottleneck`: the same with the 3x3 conv replaced by a :class:`RepMLPBlock`.
* :func:`repmlp_light_block`: the RepMLP Light block, a RepMLP bottleneck with ``r = 8``.
* :func:`small_repmlp_resnet` and :func:`small_conv_resnet`: a three-stage ResNet for small
  images whose last two stages use RepMLP bottlenecks, and its plain-conv baseline of the same depth.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._checks import check_divisible, check_positive
from .block import RepMLPBlock


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Conv (no bias, "same" padding) + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _inner_channels(channels: int, reduction: int) -> int:
    """``C / r``, the channels between a bottleneck's 1x1 convs."""
    check_positive("reduction", reduction)
    check_divisible("channels", channels, "reduction", reduction)
    return channels // reduction


class _Bottleneck(nn.Module):
    """``relu(x + expand(middle(reduce(x))))`` with 1x1 reduce/expand convs: ``(N, C, H, W) -> (N, C, H, W)``."""

    def __init__(self, channels: int, inner: int, middle: nn.Module):
        super().__init__()
        self.reduce = conv_bn_relu(channels, inner, 1)
        self.middle = middle
        self.expand = nn.Sequential(nn.Conv2d(inner, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.expand(self.middle(self.reduce(x))))


class ResNetBottleneck(_Bottleneck):
    """The plain ResNet bottleneck: 1x1 (C -> C/r), 3x3 conv + BN + ReLU, 1x1 (C/r -> C), shortcut."""

    def __init__(self, channels: int, reduction: int = 4):
        inner = _inner_channels(channels, reduction)
        super().__init__(channels, inner, conv_bn_relu(inner, inner, 3))


class RepMLPBottleneck(_Bottleneck):
    """A bottleneck whose 3x3 conv is a RepMLP block (+ BN + ReLU), at resolution ``H x W``.

    Args:
        channels: ``C``; the RepMLP block works on ``C / reduction`` channels.
        H, W, h, w, groups, global_reduction, reparam_conv_k: passed to :class:`RepMLPBlock`
            (``global_reduction`` is its ``reduction``, FC1's hidden-size divisor).
        reduction: ``r``, the bottleneck's channel reduction.
    """

    def __init__(
        self,
        channels: int,
        H: int,
        W: int,
        h: int,
        w: int,
        reduction: int = 2,
        groups: int = 1,
        global_reduction: int = 4,
        reparam_conv_k: tuple[int, ...] = (1, 3, 5),
    ):
        inner = _inner_channels(channels, reduction)
        block = RepMLPBlock(inner, inner, H, W, h, w, groups, global_reduction, reparam_conv_k)
        middle = nn.Sequential(block, nn.BatchNorm2d(inner), nn.ReLU(inplace=True))
        super().__init__(channels, inner, middle)


def repmlp_light_block(channels: int, H: int, W: int, h: int, w: int, groups: int = 1) -> RepMLPBottleneck:
    """The RepMLP Light block: 1x1 reduction by 8, RepMLP, 1x1 expansion by 8."""
    return RepMLPBottleneck(channels, H, W, h, w, reduction=8, groups=groups)


def _small_resnet(
    stage3_block: Callable[[int, int], nn.Module],
    num_classes: int,
    in_channels: int,
    image_size: int,
    width: int,
) -> nn.Sequential:
    """Stem at full resolution, then stages at 1/2 and 1/4 of it, each one bottleneck, then pool + FC."""
    check_positive("num_classes", num_classes)
    check_positive("width", width)
    check_divisible("image_size", image_size, "4 (two stride-2 stages)", 4)
    half, quarter = image_size // 2, image_size // 4
    return nn.Sequential(
        conv_bn_relu(in_channels, width, 3),
        ResNetBottleneck(width, 4),
        conv_bn_relu(width, 2 * width, 3, stride=2),
        stage3_block(2 * width, half),
        conv_bn_relu(2 * width, 4 * width, 3, stride=2),
        stage3_block(4 * width, quarter),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


def small_repmlp_resnet(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    width: int = 16,
    h: int = 8,
    groups: int = 1,
    reduction: int = 2,
) -> nn.Sequential:
    """A small RepMLP-ResNet: the bottlenecks at 1/2 and 1/4 resolution are RepMLP bottlenecks.

    Partitions are ``min(h, size) x min(h, size)``, so the last stage of a 32x32 net (8x8 maps)
    with ``h = 8`` is a single partition and has no global perceptron.
    Input ``(N, in_channels, image_size, image_size)``, output logits ``(N, num_classes)``.
    """

    def repmlp(channels: int, size: int) -> nn.Module:
        part = min(h, size)
        return RepMLPBottleneck(channels, size, size, part, part, reduction=reduction, groups=groups)

    return _small_resnet(repmlp, num_classes, in_channels, image_size, width)


def small_conv_resnet(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int = 16, reduction: int = 2
) -> nn.Sequential:
    """The plain-conv baseline of :func:`small_repmlp_resnet`: the same net with ResNet bottlenecks."""
    return _small_resnet(
        lambda channels, size: ResNetBottleneck(channels, reduction), num_classes, in_channels, image_size, width
    )
