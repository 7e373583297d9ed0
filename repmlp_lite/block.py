"""The RepMLP block (paper, Sec. 3.2 and Fig. 1): three perceptrons at training time, FCs only at inference.

Training form, on an input ``(N, C, H, W)`` cut into ``h x w`` partitions
(``H/h * W/w`` of them per image):

* **Global perceptron**: average-pool each partition to one pixel, BN, FC1, ReLU, FC2; the
  result (one value per channel and partition) is added onto every pixel of that partition.
  It gives each partition a view of the whole image.
* **Partition perceptron**: a grouped FC3 on each flattened partition ``(C*h*w -> O*h*w)``,
  then BN. Its weights are shared by all partitions; it sees all positions at once.
* **Local perceptron**: conv branches (kernel sizes ``reparam_conv_k``, "same" padding, the
  same ``groups``), each followed by BN, on each partition; summed onto FC3's output.

Inference form (:meth:`RepMLPBlock.switch_to_deploy`): the global perceptron's BN is absorbed
into FC1, and FC3+BN plus every conv+BN branch become one FC3 kernel and bias
(:mod:`repmlp_lite.fusion`, :mod:`repmlp_lite.conv_as_fc`). The outputs do not change.

The merged form has its own forward, written for speed (:mod:`repmlp_lite.fast_forward`, where
the measurements behind it are); the training form keeps the readable ``partition -> FCs ->
unpartition`` of the paper's figure (:meth:`RepMLPBlock.reference_forward`), which is also the
reference the fast forward is checked and timed against. Its BatchNorms and conv branches are layers
of :mod:`repmlp_lite.fast_training`: ``torch.nn``'s numbers in kernels suited to many small maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import fast_forward
from ._checks import check_4d, check_divisible, check_positive
from .conv_as_fc import conv_bias_to_fc, conv_to_fc
from .fast_training import PartitionBatchNorm1d
from .fusion import fuse_bn_linear, fuse_linear_bn
from .layers import ConvBNBranch, GroupedFC
from .reparameterize import Reparameterizable


def partition(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Cut ``(N, C, H, W)`` into ``h x w`` partitions: ``(N * H/h * W/w, C, h, w)``.

    Two free views around one copy: ``reshape`` to ``(N, C, H/h, h, W/w, w)``, ``permute`` the
    partition indices in front, and ``reshape`` to the partitions, which copies (chapter 4).
    """
    n, c, height, width = x.shape
    x = x.reshape(n, c, height // h, h, width // w, w).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, c, h, w)


def unpartition(parts: torch.Tensor, n: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`partition`: ``(N * H/h * W/w, O, h, w)`` back to ``(N, O, H, W)``, one copy."""
    _, o, h, w = parts.shape
    parts = parts.reshape(n, height // h, width // w, o, h, w)
    return parts.permute(0, 3, 1, 4, 2, 5).reshape(n, o, height, width)


class GlobalPerceptron(Reparameterizable):
    """Pool each partition to a pixel, BN, FC1, ReLU, FC2: ``(N, C, H, W) -> (N, C, H/h, W/w)``.

    As in the authors' code, FC1 acts on the pooled pixels of *all* partitions at once
    (``C * H/h * W/w`` features), and FC2 maps back to that size: each partition's
    correction depends on the whole image. (The paper's Sec. 4.4 implies the same: more
    partitions, more parameters in FC1 and FC2.)
    """

    def __init__(self, channels: int, h_parts: int, w_parts: int, h: int, w: int, fc1_fc2_reduction: int):
        super().__init__()
        features = channels * h_parts * w_parts
        hidden = features // fc1_fc2_reduction
        if hidden < 1:
            raise ValueError(
                f"fc1_fc2_reduction={fc1_fc2_reduction} leaves no hidden unit: "
                f"need fc1_fc2_reduction <= C*(H/h)*(W/w) = {features}"
            )
        self.parts = (h_parts, w_parts)
        self.pool = nn.AvgPool2d((h, w))
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(channels)
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_pooled(self.pool(x))

    def from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """BN, FC1, ReLU, FC2 on partitions already pooled: ``(N, C, H/h, W/w)``, the same shape out."""
        v = pooled if self.deployed else self.bn(pooled)  # merged: the BN is in FC1
        v = self.fc2(F.relu(self.fc1(v.flatten(1))))
        return v.reshape(pooled.shape)

    def _merge_own(self) -> None:
        """Absorb the BN into FC1 (:func:`repmlp_lite.fusion.fuse_bn_linear`)."""
        weight, bias = fuse_bn_linear(self.bn, self.fc1.weight, self.fc1.bias, self.parts[0] * self.parts[1])
        self.fc1.weight.copy_(weight)
        self.fc1.bias.copy_(bias)
        self.bn = None


class RepMLPBlock(Reparameterizable):
    """RepMLP: ``(N, C, H, W) -> (N, O, H, W)``, trained with conv branches, deployed as FCs.

    Args:
        in_channels: ``C``.
        out_channels: ``O``.
        H, W: the input resolution the block is built for (FC1/FC2 sizes depend on it).
        h, w: partition size; ``H`` must be divisible by ``h`` and ``W`` by ``w``.
        groups: ``g`` of FC3 and of the conv branches; must divide ``C`` and ``O``.
        fc1_fc2_reduction: the FC1 reduction (the authors' name; not the bottleneck's ``r``): FC1's
            hidden size is ``C * (H/h) * (W/w) / fc1_fc2_reduction``.
        reparam_conv_k: odd kernel sizes of the local perceptron's conv branches (may be empty).
        global_perceptron: build the global perceptron. As the paper says (Sec. 3.2) and the authors'
            code does, it is built only when there is more than one partition:
            its job is to let partitions see each other, and a single partition has no other.

    ``deployed`` (:class:`~repmlp_lite.reparameterize.Reparameterizable`) says which form the block is in;
    :meth:`switch_to_deploy` merges the global perceptron, then FC3 (:meth:`_merge_own`).
    Parameters of the deployed form: FC3 has ``O*h*w * C*h*w / g`` weights, against
    ``O*H*W * C*H*W`` for one FC over the whole map.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        H: int,
        W: int,
        h: int,
        w: int,
        groups: int = 1,
        fc1_fc2_reduction: int = 1,
        reparam_conv_k: Sequence[int] = (1, 3, 5),
        global_perceptron: bool = True,
    ):
        super().__init__()
        for name, value in [
            ("in_channels", in_channels), ("out_channels", out_channels), ("H", H), ("W", W),
            ("h", h), ("w", w), ("groups", groups), ("fc1_fc2_reduction", fc1_fc2_reduction),
        ]:
            check_positive(name, value)
        check_divisible("H", H, "h", h)
        check_divisible("W", W, "w", w)
        check_divisible("in_channels", in_channels, "groups", groups)
        check_divisible("out_channels", out_channels, "groups", groups)
        if len(set(reparam_conv_k)) != len(reparam_conv_k):
            raise ValueError(f"reparam_conv_k={tuple(reparam_conv_k)} repeats a kernel size: each branch needs its own")

        self.in_channels, self.out_channels = in_channels, out_channels
        self.H, self.W, self.h, self.w = H, W, h, w
        self.groups = groups

        needs_global = global_perceptron and (H != h or W != w)
        self.global_perceptron = (
            GlobalPerceptron(in_channels, H // h, W // w, h, w, fc1_fc2_reduction) if needs_global else None
        )
        self.fc3 = GroupedFC(in_channels * h * w, out_channels * h * w, groups)
        self.fc3_bn: nn.BatchNorm1d | None = PartitionBatchNorm1d(out_channels * h * w)  # nn.BatchNorm1d's numbers
        self.local_perceptron: nn.ModuleDict | None = nn.ModuleDict(
            {f"conv{k}": ConvBNBranch(in_channels, out_channels, k, groups) for k in reparam_conv_k}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merged_forward(x) if self.deployed else self.reference_forward(x)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's forward written plainly: partition, the three perceptrons, unpartition.

        What :meth:`forward` runs before merging. It also runs on a merged block (no BN, no conv
        branches then), with the same result as :meth:`merged_forward`, only slower: it is the
        reference the fast path is checked and timed against.
        """
        self._check_input(x)
        n, c = x.shape[:2]
        parts = partition(x, self.h, self.w)  # (M, C, h, w), M = N * H/h * W/w
        if self.global_perceptron is not None:
            # Pool and add on the partitions, where each one's h*w pixels are contiguous: cheaper
            # than pooling x, and no full-size x + v is written before partitioning.
            pooled = parts.mean((2, 3)).reshape(n, self.H // self.h, self.W // self.w, c)
            v = self.global_perceptron.from_pooled(pooled.permute(0, 3, 1, 2))  # (N, C, H/h, W/w)
            parts = parts + v.permute(0, 2, 3, 1).reshape(-1, c, 1, 1)  # one value per partition and channel
        out = self.fc3(parts.reshape(parts.shape[0], -1))  # (M, O*h*w)
        if not self.deployed:  # FC3's BN and the conv branches (merged into FC3 once deployed)
            out = self.fc3_bn(out)
            for branch in self.local_perceptron.values():
                out = out + branch(parts).reshape(out.shape)
        out = out.reshape(-1, self.out_channels, self.h, self.w)
        return unpartition(out, n, self.H, self.W)

    def merged_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The merged block's forward (what :meth:`forward` runs once merged): ``(N, C, H, W) -> (N, O, H, W)``.

        One FC3 on the partitions plus the global perceptron's correction, with as few copies as
        can be (:func:`repmlp_lite.fast_forward.merged_forward`); the same output as
        :meth:`reference_forward` on the merged block.
        """
        if not self.deployed:
            raise ValueError("merged_forward needs the merged block: call switch_to_deploy() first")
        self._check_input(x)
        gp = self.global_perceptron
        return fast_forward.merged_forward(
            x, self.fc3.weight, self.fc3.bias, self.groups, self.h, self.w, None if gp is None else gp.from_pooled
        )

    def _check_input(self, x: torch.Tensor) -> None:
        check_4d("input", x)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"input has {x.shape[1]} channels but the block was built for in_channels={self.in_channels}")
        if tuple(x.shape[2:]) != (self.H, self.W):
            raise ValueError(
                f"input is {x.shape[2]}x{x.shape[3]} but the block was built for H x W = {self.H}x{self.W}"
            )

    @torch.no_grad()
    def merged_fc3(self) -> tuple[torch.Tensor, torch.Tensor]:
        """FC3+BN plus every conv+BN branch as one grouped FC: ``(weight (O*h*w, C*h*w/g), bias (O*h*w,))``.

        The paper's merge: BN absorption (Sec. 3.4, Eq. 16 and 17), each conv as an FC (Sec. 3.3, Eq. 15),
        summed (Sec. 3.4).

        Uses the BN running statistics, so it equals the training form in eval mode.
        """
        self.check_not_merged("its conv branches and BNs are gone")
        weight, bias = fuse_linear_bn(self.fc3.weight, None, self.fc3_bn)
        for branch in self.local_perceptron.values():
            kernel, conv_bias = branch.fused()
            weight = weight + conv_to_fc(kernel, self.h, self.w, groups=self.groups)
            bias = bias + conv_bias_to_fc(conv_bias, self.h, self.w)
        return weight, bias

    def _merge_own(self) -> None:
        """FC3, its BN and the conv branches become one FC3 with bias (:meth:`merged_fc3`); the global
        perceptron's BN is folded into its FC1 before, by :meth:`switch_to_deploy`."""
        weight, bias = self.merged_fc3()
        self.fc3.weight.copy_(weight)
        self.fc3.bias = nn.Parameter(bias)
        self.fc3_bn = None
        self.local_perceptron = None

    def extra_repr(self) -> str:
        return (
            f"C={self.in_channels}, O={self.out_channels}, H x W={self.H}x{self.W}, "
            f"h x w={self.h}x{self.w}, groups={self.groups}, deployed={self.deployed}"
        )
