"""The layers that several model files build from (as ``timm.layers`` holds timm's).

* :func:`grouped_linear`, :class:`GroupedFC`: a fully-connected layer with groups, on rows ``(M, in)``:
  the RepMLP block's FC3, and RepMLPNet's FC3 with share-sets (``groups = S``).
* :class:`ConvBNBranch`: a bias-free conv with "same" padding and its BatchNorm, one branch of a local
  perceptron. It does not merge on its own: :meth:`ConvBNBranch.fused` gives the block that owns it
  the branch as one kernel and bias, which the block folds into its FC3.
* :class:`ConvBNLayer` (and :func:`conv_bn_relu`): conv + BN (+ an activation) that merges itself
  (:class:`~repmlp_lite.reparameterize.Reparameterizable`): the BN is folded into the conv.
* :class:`LinearBNLayer`: FC + BatchNorm1d (+ an activation), merged the same way (the pure MLP's head).

BN folding itself is :mod:`repmlp_lite.fusion`'s (the book's derivation, chapter 3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_divisible, check_odd_kernel
from .fast_training import PartitionBatchNorm2d, PartitionConv2d
from .fusion import fuse_conv_bn, fuse_linear_bn
from .reparameterize import Reparameterizable


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
    """A grouped FC on rows: ``(M, in) -> (M, out)``; group ``j`` maps features ``j*in/g ...`` to
    ``j*out/g ...`` with rows ``j*out/g ...`` of ``weight`` ``(out, in/g)``; ``bias`` ``(out,)`` or ``None``.

    ``F.linear`` for one group, else one batched matmul over the groups (``baddbmm`` adds the bias).
    """
    if groups == 1:
        return F.linear(x, weight, bias)
    m = x.shape[0]
    xg = x.reshape(m, groups, -1).transpose(0, 1)  # (g, M, in/g)
    wg = weight.reshape(groups, -1, weight.shape[1]).transpose(1, 2)  # (g, in/g, out/g)
    if bias is None:
        out = torch.bmm(xg, wg)  # (g, M, out/g)
    else:  # the bias added by the matmul itself (as F.linear does), not in a second pass
        out = torch.baddbmm(bias.reshape(groups, 1, -1), xg, wg)
    return out.transpose(0, 1).reshape(m, -1)  # (M, out)


class GroupedFC(nn.Module):
    """A fully-connected layer with ``groups``: ``(M, in_features) -> (M, out_features)``.

    Group ``j`` maps input features ``j*in/g ...`` to output features ``j*out/g ...``.
    ``weight`` has the layout of :func:`repmlp_lite.conv_as_fc.conv_to_fc`: ``(out, in/g)``.
    """

    def __init__(self, in_features: int, out_features: int, groups: int = 1, bias: bool = False):
        super().__init__()
        check_divisible("in_features", in_features, "groups", groups)
        check_divisible("out_features", out_features, "groups", groups)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_features, in_features // groups))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default, per group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grouped_linear(x, self.weight, self.bias, self.groups)

    def extra_repr(self) -> str:
        out_f, in_g = self.weight.shape
        return f"in_features={in_g * self.groups}, out_features={out_f}, groups={self.groups}, bias={self.bias is not None}"


class ConvBNBranch(nn.Sequential):
    """A bias-free conv with "same" padding followed by BatchNorm2d: ``(M, C, h, w) -> (M, O, h, w)``, one
    local-perceptron branch. The block that owns it folds :meth:`fused` into its FC3.

    Both run on partitions, in layers that compute ``nn.Conv2d``'s and ``nn.BatchNorm2d``'s numbers in
    kernels suited to many small maps (:mod:`repmlp_lite.fast_training`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1):
        check_odd_kernel("reparam_conv_k", kernel_size)
        super().__init__()
        self.conv = PartitionConv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=False
        )
        self.bn = PartitionBatchNorm2d(out_channels)

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The branch as one conv: ``(kernel (O, C/g, K, K), bias (O,))``."""
        return fuse_conv_bn(self.conv.weight, None, self.bn)


class ConvBNLayer(Reparameterizable):
    """Conv (no bias) + BatchNorm2d (+ an activation): ``(N, C, H, W) -> (N, O, H', W')``.

    ``padding`` defaults to ``K // 2`` ("same" at stride 1); ``act`` defaults to none. After
    :meth:`switch_to_deploy` it is one conv with bias (+ the activation): the keys ``conv.weight``
    and ``conv.bias`` replace ``conv.weight`` and ``bn.*``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        act: nn.Module | None = None,
        groups: int = 1,
        padding: int | None = None,
    ):
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(out_channels)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if not self.deployed:  # merged: the BN is in the conv
            x = self.bn(x)
        return self.act(x)

    def _merge_own(self) -> None:
        """Fold the BN into the conv (:func:`repmlp_lite.fusion.fuse_conv_bn`); eval-mode outputs unchanged."""
        weight, bias = fuse_conv_bn(self.conv.weight, self.conv.bias, self.bn)
        self.conv.weight.copy_(weight)
        self.conv.bias = nn.Parameter(bias)
        self.bn = None


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> ConvBNLayer:
    """Conv + BN + ReLU ("same" padding)."""
    return ConvBNLayer(in_channels, out_channels, kernel_size, stride, act=nn.ReLU(inplace=True))


class LinearBNLayer(Reparameterizable):
    """FC (with bias) + BatchNorm1d (+ an activation): ``(N, in_features) -> (N, out_features)``.

    After :meth:`switch_to_deploy` it is one FC (+ the activation): ``fc.weight`` and ``fc.bias`` hold
    what the BN did, and ``bn.*`` are gone.
    """

    def __init__(self, in_features: int, out_features: int, act: nn.Module | None = None):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.bn: nn.BatchNorm1d | None = nn.BatchNorm1d(out_features)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        if not self.deployed:  # merged: the BN is in the FC
            x = self.bn(x)
        return self.act(x)

    def _merge_own(self) -> None:
        """Fold the BN into the FC (:func:`repmlp_lite.fusion.fuse_linear_bn`); eval-mode outputs unchanged."""
        weight, bias = fuse_linear_bn(self.fc.weight, self.fc.bias, self.bn)
        self.fc.weight.copy_(weight)
        self.fc.bias.copy_(bias)
        self.bn = None
