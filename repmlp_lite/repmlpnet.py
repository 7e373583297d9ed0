"""RepMLPNet (Ding et al., CVPR 2022, arXiv 2112.11081): the hierarchical vision MLP and its block.

The RepMLPNet block, on an input ``(N, C, H, W)`` cut into ``h x w`` partitions:

* **Global perceptron** (a channel gate): average-pool the whole map, FC1 (``C -> C/reduction``),
  ReLU, FC2 (``C/reduction -> C``), sigmoid; the block's output is *multiplied* by it.
* **Channel perceptron** (FC3 with share-sets): channel ``c`` belongs to set ``c mod S`` (the
  authors' layout); one ``h*w x h*w`` FC per set, shared by the set's ``C/S`` channels and by
  every partition; BN over the ``S`` sets. FC3 has ``S*(h*w)^2`` weights whatever ``C`` and ``H x W``.
* **Local perceptron**: conv branches (kernel sizes ``reparam_conv_k``, "same" padding,
  ``groups = S``) with BN on the same ``S``-set maps; summed onto FC3's output.

**Locality Injection** (:meth:`RepMLPNetBlock.switch_to_deploy`): each conv+BN branch becomes
an FC kernel (:func:`~repmlp_lite.conv_as_fc.conv_to_fc`) added to FC3+BN; one FC3 with bias
remains. Because no size depends on ``H x W``, the block (and the net) runs at any resolution
whose sides ``h`` and ``w`` divide.

The net: patch embedding (conv ``4x4`` stride 4, BN, ReLU), four stages of units
``y = x + block(BN(x)); z = y + FFN(BN(y))``, a ``2x2`` stride-2 conv+BN+ReLU between stages,
then BN, global average pool and a linear head. Every module that merges is a
:class:`~repmlp_lite.reparameterize.Reparameterizable`: its ``switch_to_deploy()`` merges its
submodules first (a unit: its block and FFN; the net: every unit and conv + BN), then folds its own
BN. The deployed net keeps one BatchNorm per unit (``prebn1``): FC3 shares its weights across a
set's channels, while that BN scales each channel differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_4d, check_divisible, check_positive
from .block import partition, unpartition
from .conv_as_fc import conv_bias_to_fc, conv_to_fc
from .fast_training import PartitionBatchNorm2d
from .fusion import fuse_bn_linear, fuse_linear_bn
from .layers import ConvBNBranch, ConvBNLayer, grouped_linear
from .official import register_official, renamed_state_dict
from .reparameterize import Reparameterizable, reparameterize_model
from .zoo import register_model

FC3Impl = Literal["matmul", "conv"]


class ChannelGate(nn.Module):
    """The global perceptron of RepMLPNet: ``(N, C, H, W) -> (N, C, 1, 1)`` in ``(0, 1)``.

    Global average pool, FC1 (``C -> C/reduction``, as a 1x1 conv), ReLU, FC2, sigmoid.
    """

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        check_positive("channels", channels)
        check_positive("reduction", reduction)
        if channels // reduction < 1:
            raise ValueError(f"reduction={reduction} leaves no hidden unit: need reduction <= channels={channels}")
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = F.adaptive_avg_pool2d(x, 1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(v))))


def fc3_forward(
    rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sets: int, impl: FC3Impl = "matmul"
) -> torch.Tensor:
    """FC3 with share-sets on ``rows`` ``(B, S*h*w)``: set ``s`` maps its ``h*w`` inputs by its own FC.

    Args:
        rows: ``(B, S*h*w)``, one row per partition and group of ``S`` channels.
        weight: ``(S*h*w, h*w)``, set ``s`` owns rows ``s*h*w ... (s+1)*h*w - 1``.
        bias: ``(S*h*w,)`` or ``None``.
        sets: ``S``.
        impl: ``"matmul"`` (a batched matmul over the sets) or ``"conv"`` (a grouped 1x1 conv on
            ``(B, S*h*w, 1, 1)``, the authors' way). Same numbers.

    Returns:
        ``(B, S*h*w)``.
    """
    b, features = rows.shape
    hw = weight.shape[1]
    if impl == "conv":
        out = F.conv2d(rows.reshape(b, features, 1, 1), weight.reshape(features, hw, 1, 1), bias, groups=sets)
        return out.reshape(b, features)
    if impl != "matmul":
        raise ValueError(f"impl must be 'matmul' or 'conv', got {impl!r}")
    return grouped_linear(rows, weight, bias, sets)  # FC3 with share-sets is a grouped FC with g = S


class RepMLPNetBlock(Reparameterizable):
    """The RepMLPNet block: ``(N, C, H, W) -> (N, C, H, W)`` for any ``H, W`` divisible by ``h, w``.

    Args:
        channels: ``C``; must be divisible by ``num_sharesets``.
        h, w: partition size.
        num_sharesets: ``S``, the number of channel sets that each own one FC3.
        reparam_conv_k: odd kernel sizes of the local perceptron (``(1, 3)`` in the released nets;
            empty for none).
        gate_reduction: FC1 of the channel gate maps ``C -> C/gate_reduction`` (4 in the authors' nets).

    Training form: ``fc3_weight`` (no ``fc3_bias``) + ``fc3_bn`` + ``local_perceptron``. Deployed:
    ``fc3_weight`` and ``fc3_bias``. FC3 runs in :meth:`fc3`.
    """

    def __init__(
        self,
        channels: int,
        h: int,
        w: int,
        num_sharesets: int = 1,
        reparam_conv_k: Sequence[int] = (1, 3),
        gate_reduction: int = 4,
    ):
        super().__init__()
        for name, value in [("channels", channels), ("h", h), ("w", w), ("num_sharesets", num_sharesets)]:
            check_positive(name, value)
        check_divisible("channels", channels, "num_sharesets S", num_sharesets)
        if len(set(reparam_conv_k)) != len(reparam_conv_k):
            raise ValueError(f"reparam_conv_k={tuple(reparam_conv_k)} repeats a kernel size: each branch needs its own")
        self.channels, self.h, self.w, self.sets = channels, h, w, num_sharesets
        self.gate = ChannelGate(channels, gate_reduction)
        features = num_sharesets * h * w
        self.fc3_weight = nn.Parameter(torch.empty(features, h * w))
        nn.init.kaiming_uniform_(self.fc3_weight, a=5**0.5)  # as nn.Conv2d initialises the authors' fc3
        self.fc3_bias: nn.Parameter | None = None
        self.fc3_bn: nn.BatchNorm2d | None = PartitionBatchNorm2d(num_sharesets)  # nn.BatchNorm2d's numbers
        self.local_perceptron: nn.ModuleDict | None = nn.ModuleDict(
            {f"conv{k}": ConvBNBranch(num_sharesets, num_sharesets, k, groups=num_sharesets) for k in reparam_conv_k}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_4d("input", x)
        n, c, height, width = x.shape
        if c != self.channels:
            raise ValueError(f"input has {c} channels but the block was built for channels={self.channels}")
        check_divisible("input height H", height, "partition height h", self.h)
        check_divisible("input width W", width, "partition width w", self.w)
        gate = self.gate(x)  # (N, C, 1, 1)
        parts = partition(x, self.h, self.w)  # (M, C, h, w)
        rows = parts.reshape(-1, self.sets * self.h * self.w)  # (M*C/S, S*h*w): channel c = k*S + s
        out = self.fc3(rows)
        out = out.reshape(-1, self.sets, self.h, self.w)
        if not self.deployed:  # FC3's BN and the conv branches (injected into FC3 once deployed)
            out = self.fc3_bn(out)
            sets_map = parts.reshape(-1, self.sets, self.h, self.w)
            for branch in self.local_perceptron.values():
                out = out + branch(sets_map)
        out = unpartition(out.reshape(-1, c, self.h, self.w), n, height, width)
        return out * gate

    def fc3(self, rows: torch.Tensor) -> torch.Tensor:
        """FC3 with share-sets on ``rows`` ``(B, S*h*w)``, the same shape out (:func:`fc3_forward`)."""
        return fc3_forward(rows, self.fc3_weight, self.fc3_bias, self.sets)

    @torch.no_grad()
    def injection_parts(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each branch as an FC3-shaped ``(weight (S*h*w, h*w), bias (S*h*w,))``: ``"fc3"`` (FC3 with its
        BN folded in) and ``"conv1"``, ``"conv3"``, ... (conv+BN through :func:`conv_to_fc`). Their sum
        is the merged FC3 (:meth:`merged_fc3`)."""
        self.check_not_merged("its conv branches and BN are injected into FC3")
        parts = {"fc3": fuse_linear_bn(self.fc3_weight, None, self.fc3_bn, self.h * self.w)}  # BN: one per set
        for name, branch in self.local_perceptron.items():
            kernel, conv_bias = branch.fused()  # (S, 1, K, K), (S,)
            parts[name] = (
                conv_to_fc(kernel, self.h, self.w, groups=self.sets), conv_bias_to_fc(conv_bias, self.h, self.w)
            )
        return parts

    def merged_fc3(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Locality Injection: FC3+BN plus every conv+BN branch as one FC3 ``(S*h*w, h*w)`` with bias ``(S*h*w,)``."""
        weights, biases = zip(*self.injection_parts().values())
        return torch.stack(weights).sum(0), torch.stack(biases).sum(0)

    def _merge_own(self) -> None:
        """Locality Injection in place: one FC3 with bias; no BN, no conv."""
        weight, bias = self.merged_fc3()
        self.fc3_weight.copy_(weight)
        self.fc3_bias = nn.Parameter(bias)
        self.fc3_bn = None
        self.local_perceptron = None

    def extra_repr(self) -> str:
        return f"C={self.channels}, h x w={self.h}x{self.w}, S={self.sets}, deployed={self.deployed}"


class FFN(nn.Module):
    """1x1 conv + BN, GELU, 1x1 conv + BN: ``(N, C, H, W) -> (N, C, H, W)`` through ``C * expand`` channels."""

    def __init__(self, channels: int, expand: int = 4):
        super().__init__()
        self.fc1 = ConvBNLayer(channels, channels * expand, 1, act=nn.GELU())
        self.fc2 = ConvBNLayer(channels * expand, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


class RepMLPNetUnit(Reparameterizable):
    """``y = x + block(prebn1(x)); z = y + ffn(prebn2(y))``.

    Deployed, ``prebn2`` is folded into the FFN's first 1x1 conv; ``prebn1`` stays (a per-channel
    scale and shift): FC3 shares one kernel across the channels of a set, BN does not.
    """

    def __init__(
        self,
        channels: int,
        h: int,
        w: int,
        num_sharesets: int,
        reparam_conv_k: Sequence[int] = (1, 3),
        gate_reduction: int = 4,
        ffn_expand: int = 4,
    ):
        super().__init__()
        self.prebn1 = nn.BatchNorm2d(channels)
        self.block = RepMLPNetBlock(channels, h, w, num_sharesets, reparam_conv_k, gate_reduction)
        self.prebn2: nn.BatchNorm2d | None = nn.BatchNorm2d(channels)
        self.ffn = FFN(channels, ffn_expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.block(self.prebn1(x))
        return y + self.ffn(y if self.deployed else self.prebn2(y))  # merged: prebn2 is in the FFN

    def _merge_own(self) -> None:
        """Fold ``prebn2`` into the FFN's first conv (:func:`repmlp_lite.fusion.fuse_bn_linear`); the block
        and the FFN are merged already."""
        conv = self.ffn.fc1.conv
        weight, bias = fuse_bn_linear(self.prebn2, conv.weight.flatten(1), conv.bias)
        conv.weight.copy_(weight.reshape(conv.weight.shape))
        conv.bias = nn.Parameter(bias)
        self.prebn2 = None


class RepMLPNet(Reparameterizable):
    """RepMLPNet: ``(N, in_channels, H, W) -> (N, num_classes)``.

    Args:
        channels: width of each stage.
        hs, ws: partition size of each stage (the stage's map size at the native resolution).
        num_blocks: units per stage.
        sharesets: ``S`` of each stage.
        reparam_conv_k: the local perceptron's kernel sizes (``()`` trains without it).
        patch_size: the embedding conv's kernel and stride.
        gate_reduction: the channel gate's FC1 reduction.

    Input sides must be divisible by ``patch_size * 2**(stages-1) * h`` of the last stage.
    """

    def __init__(
        self,
        channels: Sequence[int],
        hs: Sequence[int],
        ws: Sequence[int],
        num_blocks: Sequence[int],
        sharesets: Sequence[int],
        reparam_conv_k: Sequence[int] = (1, 3),
        num_classes: int = 1000,
        in_channels: int = 3,
        patch_size: int = 4,
        gate_reduction: int = 4,
    ):
        super().__init__()
        stages = len(channels)
        for name, seq in [("hs", hs), ("ws", ws), ("num_blocks", num_blocks), ("sharesets", sharesets)]:
            if len(seq) != stages:
                raise ValueError(f"{name} has {len(seq)} entries but channels has {stages}: one per stage")
        self.embedding = ConvBNLayer(in_channels, channels[0], patch_size, patch_size, act=nn.ReLU(), padding=0)
        self.stages = nn.ModuleList(
            nn.Sequential(
                *(RepMLPNetUnit(c, h, w, s, reparam_conv_k, gate_reduction) for _ in range(blocks))
            )
            for c, h, w, s, blocks in zip(channels, hs, ws, sharesets, num_blocks)
        )
        self.downsamples = nn.ModuleList(
            ConvBNLayer(c_in, c_out, 2, 2, act=nn.ReLU(), padding=0) for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.head_norm: nn.BatchNorm2d | None = nn.BatchNorm2d(channels[-1])
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embedding(x)
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsamples[i - 1](x)
            x = stage(x)
        if not self.deployed:  # merged: head_norm is in the head
            x = self.head_norm(x)
        return self.head(x.mean((2, 3)))

    def _merge_own(self) -> None:
        """Fold ``head_norm`` into the head (a BN before a global pool is one before the FC); the units
        and conv + BN layers are merged already."""
        weight, bias = fuse_bn_linear(self.head_norm, self.head.weight, self.head.bias)
        self.head.weight.copy_(weight)
        self.head.bias.copy_(bias)
        self.head_norm = None




# The authors' six ImageNet networks (their repmlpnet.py): channels, blocks and share-sets per stage.
ARCHS: dict[str, dict[str, tuple[int, ...]]] = {
    "t": {"channels": (64, 128, 256, 512), "num_blocks": (2, 2, 6, 2), "sharesets": (1, 4, 16, 128)},
    "b": {"channels": (96, 192, 384, 768), "num_blocks": (2, 2, 12, 2), "sharesets": (1, 4, 32, 128)},
    "d": {"channels": (80, 160, 320, 640), "num_blocks": (2, 2, 18, 2), "sharesets": (1, 4, 16, 128)},
    "l": {"channels": (96, 192, 384, 768), "num_blocks": (2, 2, 18, 2), "sharesets": (1, 4, 32, 256)},
}


def repmlpnet(arch: str, resolution: int, num_classes: int = 1000, **kwargs: object) -> RepMLPNet:
    """An authors' network: ``arch`` in ``t, b, d, l``; one partition per stage at ``resolution``
    (``h = resolution / 4, /8, /16, /32``)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    check_divisible("resolution", resolution, "32 (patch 4 times three downsamplings)", 32)
    sizes = tuple(resolution // (4 * 2**i) for i in range(4))
    return RepMLPNet(**ARCHS[arch], hs=sizes, ws=sizes, num_classes=num_classes, **kwargs)  # type: ignore[arg-type]


@register_model("repmlpnet_t224")
def repmlpnet_t224(
    num_classes: int = 1000, in_channels: int = 3, reparam_conv_k: Sequence[int] = (1, 3)
) -> RepMLPNet:
    """RepMLPNet-T224 (authors' README: its ImageNet row)."""
    return repmlpnet("t", 224, num_classes, in_channels=in_channels, reparam_conv_k=reparam_conv_k)


@register_model("repmlpnet_t256")
def repmlpnet_t256(
    num_classes: int = 1000, in_channels: int = 3, reparam_conv_k: Sequence[int] = (1, 3)
) -> RepMLPNet:
    """RepMLPNet-T256 (authors' README: its ImageNet row)."""
    return repmlpnet("t", 256, num_classes, in_channels=in_channels, reparam_conv_k=reparam_conv_k)


@register_model("repmlpnet_b224")
def repmlpnet_b224(
    num_classes: int = 1000, in_channels: int = 3, reparam_conv_k: Sequence[int] = (1, 3)
) -> RepMLPNet:
    """RepMLPNet-B224 (authors' README: its ImageNet row)."""
    return repmlpnet("b", 224, num_classes, in_channels=in_channels, reparam_conv_k=reparam_conv_k)


@register_model("repmlpnet_b256")
def repmlpnet_b256(
    num_classes: int = 1000, in_channels: int = 3, reparam_conv_k: Sequence[int] = (1, 3)
) -> RepMLPNet:
    """RepMLPNet-B256 (authors' README: its ImageNet row)."""
    return repmlpnet("b", 256, num_classes, in_channels=in_channels, reparam_conv_k=reparam_conv_k)


@register_model("repmlpnet_d256")
def repmlpnet_d256(
    num_classes: int = 1000, in_channels: int = 3, reparam_conv_k: Sequence[int] = (1, 3)
) -> RepMLPNet:
    """RepMLPNet-D256 (authors' README: its ImageNet row)."""
    return repmlpnet("d", 256, num_classes, in_channels=in_channels, reparam_conv_k=reparam_conv_k)


@register_model("repmlpnet_l256")
def repmlpnet_l256(
    num_classes: int = 1000, in_channels: int = 3, reparam_conv_k: Sequence[int] = (1, 3)
) -> RepMLPNet:
    """RepMLPNet-L256 (authors' README: its ImageNet row)."""
    return repmlpnet("l", 256, num_classes, in_channels=in_channels, reparam_conv_k=reparam_conv_k)


@register_model("small_repmlpnet")
def small_repmlpnet(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 32,
    channels: Sequence[int] = (16, 32),
    sharesets: Sequence[int] = (2, 4),
    num_blocks: Sequence[int] = (1, 1),
    reparam_conv_k: Sequence[int] = (1, 3),
    partitions_per_side: int = 1,
) -> RepMLPNet:
    """A two-stage RepMLPNet for the book's digits (CPU, seconds): patch 4, map ``image_size/4``
    then ``/8``, ``partitions_per_side**2`` partitions per stage."""
    sizes = tuple(image_size // (4 * 2**i) // partitions_per_side for i in range(len(channels)))
    return RepMLPNet(
        channels, sizes, sizes, num_blocks, sharesets, reparam_conv_k, num_classes, in_channels, gate_reduction=4
    )


def inject_locality(model: nn.Module) -> nn.Module:
    """Merge only the blocks' conv branches and FC3 BNs, in place, as the authors' ``locality_injection()``
    does (every other BN stays): the form their injected checkpoints are saved in. Returns ``model``.

    The walk of :func:`~repmlp_lite.reparameterize.reparameterize_model`, restricted to the blocks."""
    return reparameterize_model(model, RepMLPNetBlock)


# ---- the authors' checkpoints (DingXiaoH/RepMLP, repmlpnet.py) ------------------------------------

_OFFICIAL_RENAMES = [
    (r"^module\.", ""),
    (r"^conv_embedding\.", "embedding."),
    (r"^embeds\.", "downsamples."),
    (r"\.repmlp_block\.gp\.", ".block.gate."),
    (r"\.repmlp_block\.fc3\.weight$", ".block.fc3_weight"),
    (r"\.repmlp_block\.fc3\.bias$", ".block.fc3_bias"),
    (r"\.repmlp_block\.fc3_bn\.", ".block.fc3_bn."),
    (r"\.repmlp_block\.repconv(\d+)\.", r".block.local_perceptron.conv\1."),
    (r"\.ffn_block\.ffn_fc(\d)\.", r".ffn.fc\1."),
]


@register_official(RepMLPNet)
def convert_official(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' RepMLPNet keys (training form, or after their ``locality_injection()``: then call
    :func:`inject_locality` on ``model`` first) renamed to ours; FC3's ``(S*h*w, h*w, 1, 1)`` conv
    weight becomes our ``(S*h*w, h*w)``. A ``module.`` prefix (DataParallel) is dropped."""
    return renamed_state_dict(state_dict, _OFFICIAL_RENAMES, ".fc3_weight")
