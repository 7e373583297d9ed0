"""The paper's blocks (RepMLP paper, Sec. 3.5 / Fig. 4; Appendix A / Fig. 6), laid out as in the authors' code.

* :class:`ResNetBottleneck`: ResNet-50's block: 1x1 conv (C_in -> mid), 3x3 conv (mid -> mid, with
  the stage's stride, as torchvision and the authors place it), 1x1 conv (mid -> C_out), shortcut.
* :class:`RepMLPBottleneck`: 1x1 conv (C_in -> mid), **3x3 conv (mid -> mid/r)**, a RepMLP block on
  ``mid/r`` channels, ReLU, **3x3 conv (mid/r -> mid)**, 1x1 conv (mid -> C_out), shortcut. The 3x3
  convs reduce and restore the channels by ``r``; no BN follows the RepMLP block (its FC3 has one).
* :class:`RepMLPLightBlock`: 1x1 conv (C_in -> mid = C_out/8), RepMLP on ``mid``, ReLU, 1x1 conv
  (mid -> C_out), shortcut; no 3x3 conv.
* :func:`small_repmlp_resnet` and :func:`small_conv_resnet`: a three-stage net for small images built
  from these blocks (chapter 5), and its plain-conv twin.

Every conv is followed by BN (a :class:`~repmlp_lite.layers.ConvBNLayer`, whose merge folds the BN into
the conv, chapter 3, so a deployed net has no BN left); every block ends with ``relu(x + shortcut(x))``.
The shortcut is the identity, or a 1x1 conv + BN when the channels or the resolution change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._checks import check_divisible, check_positive
from .block import RepMLPBlock
from .layers import ConvBNLayer, conv_bn_relu
from .zoo import register_model


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity, or 1x1 conv + BN where the channels or the resolution change."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return ConvBNLayer(in_channels, out_channels, 1, stride)


class _Residual(nn.Module):
    """``relu(body(x) + shortcut(x))``; subclasses set ``self.body`` (an ``nn.Sequential``) and ``self.shortcut``."""

    body: nn.Sequential
    shortcut: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(self.body(x) + self.shortcut(x))  # in place on the fresh sum


class ResNetBottleneck(_Residual):
    """ResNet-50's bottleneck: ``(N, C_in, H, W) -> (N, C_out, H/stride, W/stride)``.

    ``body``: 1x1 conv + BN + ReLU (C_in -> mid), 3x3 conv + BN + ReLU (mid -> mid, ``stride``),
    1x1 conv + BN (mid -> C_out).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        for name, value in [("in_channels", in_channels), ("mid_channels", mid_channels),
                            ("out_channels", out_channels), ("stride", stride)]:
            check_positive(name, value)
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.body = nn.Sequential()
        self.body.conv1 = conv_bn_relu(in_channels, mid_channels, 1)
        self.body.conv2 = conv_bn_relu(mid_channels, mid_channels, 3, stride)
        self.body.conv3 = ConvBNLayer(mid_channels, out_channels, 1)


def _repmlp(
    channels: int, H: int, W: int, h: int, w: int, groups: int, fc1_fc2_reduction: int, reparam_conv_k: Sequence[int]
) -> RepMLPBlock:
    """A ``channels -> channels`` RepMLP block."""
    return RepMLPBlock(channels, channels, H, W, h, w, groups, fc1_fc2_reduction, tuple(reparam_conv_k))


class RepMLPBottleneck(_Residual):
    """The RepMLP bottleneck (paper, Sec. 3.5 and Fig. 4): ``(N, C_in, H, W) -> (N, C_out, H, W)``.

    ``body``: 1x1 conv + BN + ReLU (C_in -> mid), 3x3 conv + BN + ReLU (mid -> mid/r), RepMLP block
    (mid/r -> mid/r, ``h x w`` partitions of the ``H x W`` map), ReLU, 3x3 conv + BN + ReLU
    (mid/r -> mid), 1x1 conv + BN (mid -> C_out).

    Args:
        in_channels, mid_channels, out_channels: ``C_in``, ``mid``, ``C_out`` (ResNet-50: mid = C_out/4).
        H, W, h, w: the map size the block is built for, and the partition size.
        r: the channel reduction around the RepMLP block (paper: 2 in c3, 4 in c4).
        groups: ``g`` of FC3 and of the local perceptron's convs.
        fc1_fc2_reduction: FC1's width divisor in the global perceptron (1 in the authors' nets).
        reparam_conv_k: kernel sizes of the local perceptron.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        H: int,
        W: int,
        h: int,
        w: int,
        r: int = 2,
        groups: int = 1,
        fc1_fc2_reduction: int = 1,
        reparam_conv_k: Sequence[int] = (1, 3, 5),
    ):
        super().__init__()
        check_positive("r", r)
        check_divisible("mid_channels", mid_channels, "r", r)
        inner = mid_channels // r
        self.shortcut = _shortcut(in_channels, out_channels, 1)
        self.body = nn.Sequential()
        self.body.reduce1x1 = conv_bn_relu(in_channels, mid_channels, 1)
        self.body.reduce3x3 = conv_bn_relu(mid_channels, inner, 3)
        self.body.repmlp = _repmlp(inner, H, W, h, w, groups, fc1_fc2_reduction, reparam_conv_k)
        self.body.relu = nn.ReLU(inplace=True)
        self.body.expand3x3 = conv_bn_relu(inner, mid_channels, 3)
        self.body.expand1x1 = ConvBNLayer(mid_channels, out_channels, 1)


class RepMLPLightBlock(_Residual):
    """The RepMLP Light block (paper, Appendix A and Fig. 6): ``(N, C_in, H, W) -> (N, C_out, H, W)``.

    ``body``: 1x1 conv + BN + ReLU (C_in -> mid), RepMLP block (mid -> mid), ReLU, 1x1 conv + BN
    (mid -> C_out). The paper's Light nets use ``mid = C_out / 8``. Arguments as in
    :class:`RepMLPBottleneck`, without ``r``.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        H: int,
        W: int,
        h: int,
        w: int,
        groups: int = 1,
        fc1_fc2_reduction: int = 1,
        reparam_conv_k: Sequence[int] = (1, 3, 5),
    ):
        super().__init__()
        self.shortcut = _shortcut(in_channels, out_channels, 1)
        self.body = nn.Sequential()
        self.body.reduce1x1 = conv_bn_relu(in_channels, mid_channels, 1)
        self.body.repmlp = _repmlp(mid_channels, H, W, h, w, groups, fc1_fc2_reduction, reparam_conv_k)
        self.body.relu = nn.ReLU(inplace=True)
        self.body.expand1x1 = ConvBNLayer(mid_channels, out_channels, 1)


def repmlp_light_block(channels: int, H: int, W: int, h: int, w: int, groups: int = 1) -> RepMLPLightBlock:
    """A ``channels -> channels`` Light block at the paper's ratio: the RepMLP block on ``channels / 8``."""
    check_divisible("channels", channels, "8 (the Light block's reduction)", 8)
    return RepMLPLightBlock(channels, channels // 8, channels, H, W, h, w, groups)


# ---- chapter 5's small nets -------------------------------------------------------------------


def _small_resnet(
    stage_block: Callable[[int, int], nn.Module],
    num_classes: int,
    in_channels: int,
    image_size: int,
    width: int,
) -> nn.Sequential:
    """Stem at full resolution, then stages at 1/2 and 1/4 of it, each one ``stage_block``, then pool + FC."""
    check_positive("num_classes", num_classes)
    check_positive("width", width)
    check_divisible("image_size", image_size, "4 (two stride-2 stages)", 4)
    check_divisible("width", width, "4 (ResNet bottleneck: mid = width / 4)", 4)
    half, quarter = image_size // 2, image_size // 4
    return nn.Sequential(
        conv_bn_relu(in_channels, width, 3),
        ResNetBottleneck(width, width // 4, width),
        ResNetBottleneck(width, width // 2, 2 * width, stride=2),
        stage_block(2 * width, half),
        ResNetBottleneck(2 * width, width, 4 * width, stride=2),
        stage_block(4 * width, quarter),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


@register_model("small_repmlp_resnet")
def small_repmlp_resnet(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    width: int = 16,
    h: int = 8,
    groups: int = 1,
    r: int = 2,
) -> nn.Sequential:
    """A small RepMLP-ResNet: a stem, one ResNet bottleneck, then two stages (stride-2 ResNet bottleneck,
    then a :class:`RepMLPBottleneck` with ``mid = C/2`` and reduction ``r``) at 1/2 and 1/4 resolution.

    Partitions are ``min(h, size) x min(h, size)``, so the last stage of a 32x32 net (8x8 maps)
    with ``h = 8`` is a single partition and has no global perceptron. ``mid = C/2`` (not ResNet's
    C/4) keeps the RepMLP blocks of so narrow a net from being only a few channels wide.
    Input ``(N, in_channels, image_size, image_size)``, output logits ``(N, num_classes)``.
    """

    def repmlp(channels: int, size: int) -> nn.Module:
        part = min(h, size)
        return RepMLPBottleneck(channels, channels // 2, channels, size, size, part, part, r=r, groups=groups)

    return _small_resnet(repmlp, num_classes, in_channels, image_size, width)


def small_conv_resnet(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int = 16
) -> nn.Sequential:
    """The plain-conv twin of :func:`small_repmlp_resnet`: ResNet bottlenecks (``mid = C/2``) instead."""
    return _small_resnet(
        lambda channels, size: ResNetBottleneck(channels, channels // 2, channels),
        num_classes, in_channels, image_size, width,
    )
