"""Counting and timing: parameters, FLOPs (torch's FlopCounterMode) and latency (torch.utils.benchmark).

The helpers at the top (:func:`count_parameters`, :func:`count_flops`, :func:`latency_ms`) are used
by the chapters. The rest is the benchmark behind chapter 6, ``python -m repmlp_lite.bench``:

* :func:`count_table`: parameters and FLOPs of a block by partition size and groups (no timing).
* :func:`block_table`: RepMLP blocks over partition sizes, partitions per image, channels, groups
  and batch sizes. Latency of the merged form against its three matrix products alone
  (:class:`BareMatmuls`, in the best of two weight layouts: the limit), and of the training form
  (eval mode) and a 3x3 conv + BN + ReLU with the same input and output; the bytes the merged
  form writes outside its products (:func:`copy_bytes`). :func:`time_breakdown` splits a forward's
  time by ``torch.profiler`` into products, copies and the global perceptron.
* :func:`bottleneck_table`: the RepMLP bottleneck and Light block against the plain ResNet bottleneck.
* :func:`deploy_table`: how long :func:`~repmlp_lite.conv_as_fc.conv_to_fc` and a whole-model
  :func:`~repmlp_lite.deploy.deploy` take, against the size of the FC kernels they build.
* :func:`engine_table`: the merged net in PyTorch against the same net exported to onnxruntime.

Timing is interleaved: every variant of one row is timed once per round, round after round, so
a slow moment of a shared machine hits all of them. A latency is the median over the rounds of
``Timer.blocked_autorange``'s median; a ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import os
import sys
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils import benchmark
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from .block import RepMLPBlock, unpartition
from .conv_as_fc import conv_to_fc
from .deploy import deploy
from .repmlpnet import RepMLPNetBlock, fc3_forward
from .zoo import create_model
from .nets import RepMLPBottleneck, ResNetBottleneck, conv_bn_relu, repmlp_light_block, small_conv_resnet, small_repmlp_resnet

# ---- counting and timing one thing ------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (BN running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``x`` as counted by ``torch.utils.flop_counter.FlopCounterMode``.

    A multiply-add counts as 2 FLOPs; element-wise ops (BN in eval mode, ReLU, adds) count as 0.
    """
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


@torch.no_grad()
def latency_ms(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, min_run_time: float = 0.5) -> float:
    """Median wall time of ``fn(x)`` in milliseconds, by ``torch.utils.benchmark.Timer`` (warm-up included).

    ``fn`` is a module (put it in eval mode first) or any callable; CUDA is synchronised by the Timer.
    """
    timer = benchmark.Timer(stmt="fn(x)", globals={"fn": fn, "x": x})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


@torch.no_grad()
def interleaved_ms(
    fns: dict[str, Callable[[torch.Tensor], Any]], x: torch.Tensor, rounds: int = 3, min_run_time: float = 0.1
) -> dict[str, list[float]]:
    """Time every ``fn(x)`` once per round, for ``rounds`` rounds: ``{name: [ms of round 1, ...]}``.

    Each is warmed up twice first; each timing is :func:`latency_ms` (a median of many runs).
    """
    for fn in fns.values():
        fn(x)
        fn(x)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(latency_ms(fn, x, min_run_time))
    return times


def median_ms(times: dict[str, list[float]]) -> dict[str, float]:
    """The median over rounds of each entry of :func:`interleaved_ms`."""
    return {name: statistics.median(t) for name, t in times.items()}


def median_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """``num / den``, the median of the per-round ratios (both were timed in the same round)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


# ---- the limit: the merged block's matrix products alone --------------------------------------


class BareMatmuls:
    """The merged block's three matrix products alone, on ready-made operands, in two layouts.

    FC1 ``(N, C*P) x (C*P, C*P/rho)``, FC2 ``(N, C*P/rho) x (C*P/rho, C*P)``
    (``rho = fc1_fc2_reduction``) and FC3 as one batched matmul over the groups, ``(g, M, C*h*w/g) x (g, C*h*w/g, O*h*w/g)`` (``P`` partitions per
    image, ``M = N*P``). The operands are the very ones the merged block multiplies on ``x``
    (FC3's from :meth:`RepMLPBlock.grouped_input`, FC1's captured by a forward hook), so
    :meth:`block_output` rebuilds the block's output from these products: the same numbers, none
    of the copying, pooling or adding around them.

    Which layout of the weights a BLAS multiplies fastest depends on the shapes and the machine,
    so the limit is the best of three (:meth:`layouts`): ``"transposed"``, ``torch.matmul`` on
    weights transposed in advance into contiguous ``(in, out)`` matrices; ``"as stored"``,
    ``F.linear`` / ``torch.bmm`` reading the stored ``(out, in)`` weights transposed (what
    ``nn.Linear`` and the merged block do); and ``"weight left"``, the transposed products
    ``W @ X^T`` on the stored weights (what the merged block does for one image of one partition).
    """

    def __init__(self, block: RepMLPBlock, x: torch.Tensor):
        if not block.deployed:
            raise ValueError("BareMatmuls needs a merged block: call switch_to_deploy() or deploy() first")
        self.block, self.batch = block, x.shape[0]
        gp = block.global_perceptron
        captured: list[torch.Tensor] = []
        hook = gp.fc1.register_forward_hook(lambda m, i, o: captured.append(i[0].detach())) if gp else None
        try:
            with torch.no_grad():
                self.fc3_input = block.grouped_input(x).contiguous()  # (g, M, in/g)
        finally:
            if hook is not None:
                hook.remove()

        g, weight = block.groups, block.fc3.weight.detach()
        self.fc3_weight_stored = weight.reshape(g, -1, weight.shape[1])  # (g, out/g, in/g), a view
        self.fc3_weight = self.fc3_weight_stored.transpose(1, 2).contiguous()  # (g, in/g, out/g)
        self.fc3_product = torch.bmm(self.fc3_input, self.fc3_weight)  # (g, M, out/g): what the copy out reads
        self._operand = torch.empty_like(self.fc3_input)  # where the copy in writes
        self.fc1_input = self.fc1_weight = self.fc2_weight = None
        if gp is not None:
            self.fc1_input = captured[0].contiguous()  # (N, C*P)
            self.fc1_weight = gp.fc1.weight.detach().t().contiguous()  # (C*P, C*P/rho)
            self.fc2_weight = gp.fc2.weight.detach().t().contiguous()  # (C*P/rho, C*P)

    def __call__(self, x: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The products ``(FC2 of FC1, FC3)`` on the transposed weights; ``x`` is ignored."""
        fc2 = None
        if self.fc1_input is not None:
            fc2 = torch.matmul(torch.matmul(self.fc1_input, self.fc1_weight), self.fc2_weight)
        return fc2, torch.matmul(self.fc3_input, self.fc3_weight)

    def as_stored(self, x: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The same products on the weights as stored, read transposed; ``x`` is ignored."""
        fc2 = None
        gp = self.block.global_perceptron
        if self.fc1_input is not None:
            fc2 = F.linear(F.linear(self.fc1_input, gp.fc1.weight), gp.fc2.weight)
        return fc2, torch.bmm(self.fc3_input, self.fc3_weight_stored.transpose(1, 2))

    def weight_left(self, x: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The same products transposed, stored weights on the left (``W @ X^T``); ``x`` is ignored."""
        fc2 = None
        gp = self.block.global_perceptron
        if self.fc1_input is not None:
            fc2 = torch.mm(gp.fc2.weight, torch.mm(gp.fc1.weight, self.fc1_input.t()))
        return fc2, torch.bmm(self.fc3_weight_stored, self.fc3_input.transpose(1, 2))

    def layouts(self) -> dict[str, Callable[[torch.Tensor | None], Any]]:
        """``{layout name: the products in that layout}``, for :func:`interleaved_ms`."""
        return {"transposed": self, "as stored": self.as_stored, "weight left": self.weight_left}

    def copies(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The merged block's two copies alone, without products or global perceptron: ``x`` to FC3's
        operand (:meth:`~repmlp_lite.block.RepMLPBlock.grouped_partitions`) and a product back to a
        map (:meth:`~repmlp_lite.block.RepMLPBlock.ungrouped_output`). As in the merged forward,
        the copy in writes into a buffer kept from call to call, the copy out into a new tensor,
        and both are views for one image of one partition."""
        return self.block.grouped_partitions(x, self._operand), self.block.ungrouped_output(self.fc3_product)

    def block_output(self, fc3_product: torch.Tensor) -> torch.Tensor:
        """The block's output ``(N, O, H, W)`` from the FC3 product: add the bias, undo the layout."""
        b = self.block
        out = fc3_product.transpose(0, 1).reshape(fc3_product.shape[1], -1) + b.fc3.bias.detach()
        return unpartition(out.reshape(-1, b.out_channels, b.h, b.w), self.batch, b.H, b.W)

    def flops(self) -> int:
        """FLOPs of the three products, by hand: ``2 * rows * inner * columns`` each."""
        g, m, k = self.fc3_input.shape
        total = 2 * g * m * k * self.fc3_weight.shape[2]
        if self.fc1_input is not None:
            n, features = self.fc1_input.shape
            total += 2 * 2 * n * features * self.fc1_weight.shape[1]  # FC1 and FC2: the same size
        return total


# ---- where the merged block's time and memory traffic go ---------------------------------------------

_PRODUCTS = {torch.ops.aten.mm, torch.ops.aten.bmm, torch.ops.aten.addmm, torch.ops.aten.baddbmm}
# ops that return their input's memory without being marked as views: ``reshape`` of a fresh copy
_NOT_COPIES = _PRODUCTS | {torch.ops.aten._unsafe_view, torch.ops.aten.alias, torch.ops.aten.lift_fresh}


class _WrittenBytes(TorchDispatchMode):
    """Adds up the bytes written by every op that is neither a matrix product nor a view."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket not in _NOT_COPIES and not func.is_view:
            self.bytes += sum(t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


@torch.no_grad()
def copy_bytes(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> int:
    """Bytes per image that ``fn(x)`` writes outside its matrix products (``mm``, ``bmm``,
    ``addmm``, ``baddbmm``) and views: the copies, the element-wise passes and their results.

    ``fn`` is called once before counting (caches filled). A matrix product that adds a bias
    writes it into its output first; that pass is the product's and not counted.
    """
    fn(x)
    with _WrittenBytes() as counter:
        fn(x)
    return counter.bytes // x.shape[0]


# op name (torch.profiler) -> what it does in the merged block's forward
TIME_CATEGORIES = {
    "aten::baddbmm": "FC3 product",
    "aten::bmm": "FC3 product",
    "aten::addmm": "FC1, FC2 products",
    "aten::mm": "FC1, FC2 products",
    "aten::index_select": "copies in and out",
    "aten::copy_": "copies in and out",
    "aten::cat": "copies in and out",
    "aten::stack": "copies in and out",
    "aten::mean": "pool, ReLU, add v",
    "aten::sum": "pool, ReLU, add v",
    "aten::div_": "pool, ReLU, add v",
    "aten::relu": "pool, ReLU, add v",
    "aten::add_": "pool, ReLU, add v",
    "aten::add": "pool, ReLU, add v",
}


@contextlib.contextmanager
def quiet_stderr():
    """Silence the process's stderr (file descriptor 2): the profiler's C++ library (Kineto) writes
    a line there when it starts and stops, which would land in every notebook output."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@torch.no_grad()
def time_breakdown(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, iters: int = 20) -> dict[str, float]:
    """Where ``fn(x)``'s time goes, by ``torch.profiler``: ms per call for each category of
    :data:`TIME_CATEGORIES`, ``"other"`` for every other op (views, allocations), and ``"total"``,
    the median wall time of one profiled call.

    An op's time is the median of the self CPU times of its ``iters`` calls with the same input
    shapes, times the number of such calls per forward: on a shared machine a call that was
    interrupted by another process is an outlier, and a median ignores it where a sum would not.

    On a merged block the products are FC3 (``baddbmm``) and FC1, FC2 (``addmm``); the global
    perceptron's other work is pooling, ReLU and the in-place add of its correction.
    """
    for _ in range(2):
        fn(x)
    walls = []
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(iters):
            start = time.perf_counter()
            fn(x)
            walls.append(time.perf_counter() - start)
    calls: dict[tuple[str, str], list[float]] = {}
    for event in prof.events():
        calls.setdefault((event.key, str(event.input_shapes)), []).append(event.self_cpu_time_total / 1e3)
    ms: dict[str, float] = {name: 0.0 for name in dict.fromkeys(TIME_CATEGORIES.values())} | {"other": 0.0}
    for (name, _), times in calls.items():
        ms[TIME_CATEGORIES.get(name, "other")] += statistics.median(times) * len(times) / iters
    ms["total"] = statistics.median(walls) * 1e3
    return ms


# ---- counting only: parameters and FLOPs ------------------------------------------------------------


def count_table(
    channels: int = 32, size: int = 16, hs: Sequence[int] = (2, 4, 8), groups: Sequence[int] = (1, 2, 4, 8)
) -> list[dict[str, Any]]:
    """Parameters and FLOPs per image of a ``C -> C`` block on ``size x size`` maps, for every partition
    size ``h = w`` in ``hs`` and every ``g`` in ``groups``: training form, merged form and the 3x3 conv
    baseline, all counted (:func:`count_parameters`, :func:`count_flops`). For comparison, the paper's
    formulas: ``fc3_formula = C*O*h^2*w^2/g`` and ``one_fc_params = C*O*H^2*W^2`` (one FC on the whole map).
    """
    conv = conv_bn_relu(channels, channels, 3).eval()
    x = torch.randn(1, channels, size, size)
    rows = []
    for h in hs:
        for g in groups:
            torch.manual_seed(0)
            train = RepMLPBlock(channels, channels, size, size, h, h, g, fc1_fc2_reduction=4).eval()
            merged = deploy(train)
            rows.append({
                "table": "count",
                "C": channels,
                "H": size,
                "h": h,
                "groups": g,
                "params_train": count_parameters(train),
                "params_merged": count_parameters(merged),
                "params_conv": count_parameters(conv),
                "fc3_params": merged.fc3.weight.numel(),
                "fc3_formula": channels * channels * h**4 // g,
                "one_fc_params": channels * channels * size**4,
                "flops_train": count_flops(train, x),
                "flops_merged": count_flops(merged, x),
                "flops_conv": count_flops(conv, x),
            })
    return rows


# ---- the RepMLP block at the paper's settings ---------------------------------------------------


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters everywhere in ``model`` (as after training)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                bn.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def block_configs(quick: bool = False, max_fc3: int = 2**25) -> list[dict[str, int]]:
    """The block settings measured: ``h = w`` in {7, 8, 10}, ``parts`` = 1 to 4 partitions per side
    (1, 4, 9, 16 per image, on ``H = W = parts * h`` maps), ``C = O`` in {64, 128, 256, 512},
    ``g`` in {1, 2, 4, 8}, batch 1, 8 and 32; a setting is kept when FC3 has at most ``max_fc3``
    weights (``C*O*h^2*w^2/g``; 2**25 is 128 MiB in float32), so that the sweep fits a CPU's
    memory and an afternoon; and C = 512 once, with h = 7, g = 8 (300 MiB) on 1 and 4 partitions.
    ``quick``: C = 64, h = 8, 2 x 2 partitions, g in {1, 4}, batch 1 and 32.
    """
    if quick:
        return [dict(channels=64, h=8, groups=g, batch=n, parts=2) for g in (1, 4) for n in (1, 32)]
    return [
        dict(channels=c, h=h, groups=g, batch=n, parts=k)
        for h in (7, 8, 10)
        for c in (64, 128, 256, 512)
        for g in (1, 2, 4, 8)
        for k in (1, 2, 3, 4)
        if c * c * h**4 // g <= max_fc3 or ((c, h, g) == (512, 7, 8) and k <= 2)
        for n in (1, 8, 32)
    ]


def measure_block(
    channels: int,
    h: int,
    groups: int,
    batch: int,
    parts: int = 2,
    device: str = "cpu",
    rounds: int = 3,
    min_run_time: float = 0.1,
    seed: int = 0,
    baselines: bool = True,
) -> dict[str, Any]:
    """One row of :func:`block_table`: a ``C -> C`` RepMLP block on ``(batch, C, parts*h, parts*h)``
    with ``h x h`` partitions (``P = parts**2`` per image).

    Times, interleaved: the merged form, its :class:`BareMatmuls` in each layout (``bare_ms`` is
    the fastest layout, named in ``bare_layout``), and with ``baselines`` the training form (eval
    mode) and the conv baseline (3x3 conv + BN + ReLU). Ratios: ``merged/bare`` (per round, over
    the fastest layout of that round), ``merged/train``, ``merged/conv``. Also parameters, FLOPs
    and ``copies``: bytes per image the merged form writes outside its products (:func:`copy_bytes`),
    next to ``io_bytes``, its input plus output per image. ``copies_ms`` times the copy in and
    the copy out alone (:meth:`BareMatmuls.copies`), and ``floor/bare`` is ``(bare + copies) /
    bare``: the best ratio any forward that makes those two copies around the products can reach.
    """
    torch.manual_seed(seed)
    size = parts * h
    train = randomize_bn(RepMLPBlock(channels, channels, size, size, h, h, groups, fc1_fc2_reduction=4), seed).eval()
    merged = deploy(train)
    conv = randomize_bn(conv_bn_relu(channels, channels, 3), seed).eval()
    x = torch.randn(batch, channels, size, size)
    train, merged, conv, x = train.to(device), merged.to(device), conv.to(device), x.to(device)
    bare = BareMatmuls(merged, x)
    layouts = {f"bare {name}": fn for name, fn in bare.layouts().items()}

    fns = {"merged": merged} | layouts | {"copies": bare.copies}
    fns |= {"train": train, "conv": conv} if baselines else {}
    times = interleaved_ms(fns, x, rounds, min_run_time)
    times["bare"] = [min(t[i] for name, t in times.items() if name in layouts) for i in range(rounds)]
    times["floor"] = [b + c for b, c in zip(times["bare"], times["copies"])]
    ms = median_ms(times)
    row = {
        "table": "block",
        "C": channels,
        "H": size,
        "h": h,
        "P": parts**2,
        "groups": groups,
        "batch": batch,
        "merged/bare": median_ratio(times, "merged", "bare"),
        "floor/bare": median_ratio(times, "floor", "bare"),
        "merged_ms": ms["merged"],
        "bare_ms": ms["bare"],
        "bare_layout": min(layouts, key=lambda name: ms[name]).removeprefix("bare "),
        "copies_ms": ms["copies"],
        "copies": copy_bytes(merged, x),
        "io_bytes": 2 * channels * size * size * x.element_size(),
        "params_merged": count_parameters(merged),
        "fc3_params": merged.fc3.weight.numel(),  # C*O*h^2*w^2/g
        "one_fc_params": channels * channels * size**4,  # one FC over the whole map: C*O*H^2*W^2
        "flops_merged": count_flops(merged, x),
        "flops_bare": bare.flops(),
    }
    if baselines:
        row |= {
            "merged/train": median_ratio(times, "merged", "train"),
            "merged/conv": median_ratio(times, "merged", "conv"),
            "train_ms": ms["train"],
            "conv_ms": ms["conv"],
            "params_train": count_parameters(train),
            "params_conv": count_parameters(conv),
            "flops_train": count_flops(train, x),
            "flops_conv": count_flops(conv, x),
        }
    return row


def block_table(
    quick: bool = False,
    device: str = "cpu",
    rounds: int = 3,
    min_run_time: float = 0.1,
    configs: Sequence[dict[str, int]] | None = None,
    baselines: bool = True,
) -> list[dict[str, Any]]:
    """:func:`measure_block` over ``configs`` (default: :func:`block_configs` of ``quick``)."""
    configs = block_configs(quick) if configs is None else configs
    timing = dict(device=device, rounds=rounds, min_run_time=min_run_time, baselines=baselines)
    return [measure_block(**config, **timing) for config in configs]


# ---- the RepMLP-ResNet bottleneck and Light block --------------------------------------------------


def bottleneck_configs(quick: bool = False) -> list[dict[str, int]]:
    """Bottlenecks of ``channels`` in and out on ``2h x 2h`` maps; RepMLP with ``g = 4`` (``quick``: one size)."""
    if quick:
        return [dict(channels=256, h=8, groups=4, batch=n) for n in (1, 32)]
    return [dict(channels=c, h=h, groups=4, batch=n) for c in (256, 512) for h in (7, 8) for n in (1, 32)]


def measure_bottleneck(
    kind: str,
    channels: int,
    h: int,
    groups: int,
    batch: int,
    device: str = "cpu",
    rounds: int = 3,
    min_run_time: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """One row of :func:`bottleneck_table`: ``kind`` is ``"bottleneck"`` (:class:`RepMLPBottleneck`,
    ``mid = C/4`` as in ResNet-50, RepMLP on ``mid / 2``: the paper's c3 setting ``r = 2``) or
    ``"light"`` (:func:`repmlp_light_block`, RepMLP on ``C / 8``), against the plain
    :class:`ResNetBottleneck` (``mid = C/4``) on the same input ``(batch, C, 2h, 2h)``.
    """
    torch.manual_seed(seed)
    size = 2 * h
    if kind == "bottleneck":
        train = RepMLPBottleneck(channels, channels // 4, channels, size, size, h, h, r=2, groups=groups)
    elif kind == "light":
        train = repmlp_light_block(channels, size, size, h, h, groups=groups)
    else:
        raise ValueError(f"kind must be 'bottleneck' or 'light', got {kind!r}")
    train = randomize_bn(train, seed).eval()
    merged = deploy(train)
    resnet = randomize_bn(ResNetBottleneck(channels, channels // 4, channels), seed).eval()
    x = torch.randn(batch, channels, size, size)
    train, merged, resnet, x = train.to(device), merged.to(device), resnet.to(device), x.to(device)

    times = interleaved_ms({"train": train, "merged": merged, "resnet": resnet}, x, rounds, min_run_time)
    ms = median_ms(times)
    return {
        "table": "bottleneck",
        "kind": kind,
        "C": channels,
        "H": size,
        "h": h,
        "groups": groups,
        "batch": batch,
        "train_ms": ms["train"],
        "merged_ms": ms["merged"],
        "resnet_ms": ms["resnet"],
        "merged/train": median_ratio(times, "merged", "train"),
        "merged/resnet": median_ratio(times, "merged", "resnet"),
        "params_train": count_parameters(train),
        "params_merged": count_parameters(merged),
        "params_resnet": count_parameters(resnet),
        "flops_train": count_flops(train, x),
        "flops_merged": count_flops(merged, x),
        "flops_resnet": count_flops(resnet, x),
    }


def bottleneck_table(
    quick: bool = False,
    device: str = "cpu",
    rounds: int = 3,
    min_run_time: float = 0.1,
    configs: Sequence[dict[str, int]] | None = None,
) -> list[dict[str, Any]]:
    """:func:`measure_bottleneck` for both kinds over ``configs`` (default: :func:`bottleneck_configs`)."""
    configs = bottleneck_configs(quick) if configs is None else configs
    return [
        measure_bottleneck(kind, **config, device=device, rounds=rounds, min_run_time=min_run_time)
        for config in configs
        for kind in ("bottleneck", "light")
    ]


# ---- the whole network against its layers ------------------------------------------------------


@torch.no_grad()
def net_vs_layers(
    model: nn.Sequential, x: torch.Tensor, rounds: int = 3, min_run_time: float = 0.1
) -> dict[str, Any]:
    """The whole ``model(x)`` timed against the sum of its top-level layers, each timed alone on its
    own input (the previous layer's output, computed once beforehand).

    ``model`` must be a chain: its top-level layers applied in order give its output (an
    ``nn.Sequential`` such as :func:`~repmlp_lite.nets.small_repmlp_resnet`, deployed or not).
    All are timed interleaved (:func:`interleaved_ms`). Returns ``net_ms``, ``layers_ms`` (the
    sum of the layers' medians), ``net/layers`` (the median over rounds of the net's time over
    the sum of that round's layer times; above 1 means the net costs more than its parts) and
    ``layer_ms``, ``{layer name: ms}``.
    """
    layers = dict(model.named_children())
    rule = "model: its top-level layers applied in order must give its output (an nn.Sequential)"
    inputs, out = {}, x
    try:
        for name, layer in layers.items():
            inputs[name], out = out, layer(out)
    except RuntimeError as error:  # a forward that reshapes between its layers, say
        raise ValueError(f"{rule}; layer {name!r} failed: {error}") from error
    if not torch.equal(out, model(x)):
        raise ValueError(rule)
    fns = {"net": model} | {
        f"layer {name}": (lambda _, layer=layer, inp=inputs[name]: layer(inp)) for name, layer in layers.items()
    }
    times = interleaved_ms(fns, x, rounds, min_run_time)
    sums = [sum(t[i] for key, t in times.items() if key != "net") for i in range(rounds)]
    ms = median_ms(times)
    return {
        "net_ms": ms["net"],
        "layers_ms": sum(ms[f"layer {name}"] for name in layers),
        "net/layers": statistics.median(n / s for n, s in zip(times["net"], sums)),
        "layer_ms": {name: ms[f"layer {name}"] for name in layers},
    }


# ---- the cost of merging --------------------------------------------------------------------------


def _once_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median of ``repeats`` single calls of ``fn()`` (after one warm-up), in ms.

    Merging is done once per model, so it is timed call by call, not averaged over many calls.
    """
    fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return statistics.median(timer.timeit(1).median for _ in range(repeats)) * 1e3


def deploy_table(quick: bool = False, device: str = "cpu", repeats: int = 3) -> list[dict[str, Any]]:
    """Time of :func:`conv_to_fc` (a 3x3 kernel on an 8x8 partition, C -> C) and of :func:`deploy`
    on a small RepMLP-ResNet, against the number of entries of the FC kernels they build.
    """
    rows = []
    gen = torch.Generator().manual_seed(0)
    for channels in (8, 16, 32) if quick else (8, 16, 32, 64, 128):
        kernel = torch.randn(channels, channels, 3, 3, generator=gen).to(device)
        rows.append({
            "table": "deploy",
            "what": "conv_to_fc",
            "C": channels,
            "fc_kernel_entries": (channels * 64) ** 2,
            "ms": _once_ms(lambda: conv_to_fc(kernel, 8, 8), repeats),
        })
    for width in (8, 16) if quick else (8, 16, 32):
        model = randomize_bn(small_repmlp_resnet(width=width)).to(device)
        merged = deploy(model)
        entries = sum(b.fc3.weight.numel() for b in merged.modules() if isinstance(b, RepMLPBlock))
        rows.append({
            "table": "deploy",
            "what": "deploy(small_repmlp_resnet)",
            "C": width,
            "fc_kernel_entries": entries,
            "ms": _once_ms(lambda: deploy(model), repeats),
        })
    return rows


# ---- a second engine: onnxruntime ---------------------------------------------------------------


def engine_table(quick: bool = False, rounds: int = 3, min_run_time: float = 0.1) -> list[dict[str, Any]]:
    """The small RepMLP-ResNet (32x32 images): training form, merged form in PyTorch and the merged
    form exported to ONNX and run by onnxruntime (CPU), against the conv ResNet of the same depth
    in both engines. ``vs_merged_torch``: latency over that of the merged net in PyTorch. CPU only.
    """
    from .export import export_onnx, onnxruntime_fn  # onnx and onnxruntime only when needed

    torch.manual_seed(0)
    train = randomize_bn(small_repmlp_resnet(width=16)).eval()
    merged = deploy(train)
    conv = randomize_bn(small_conv_resnet(width=16)).eval()
    merged_ort = onnxruntime_fn(export_onnx(merged))
    conv_ort = onnxruntime_fn(export_onnx(conv))
    rows = []
    for batch in (1,) if quick else (1, 32):
        x = torch.randn(batch, 3, 32, 32)
        fns = {"train": train, "merged": merged, "merged_ort": merged_ort, "conv": conv, "conv_ort": conv_ort}
        times = interleaved_ms(fns, x, rounds, min_run_time)
        ms = median_ms(times)
        for name, model, engine in [
            ("train", train, "torch"), ("merged", merged, "torch"), ("merged_ort", merged, "onnxruntime"),
            ("conv", conv, "torch"), ("conv_ort", conv, "onnxruntime"),
        ]:
            rows.append({
                "table": "engine",
                "model": "conv ResNet" if name.startswith("conv") else f"RepMLP-ResNet {name.split('_')[0]}",
                "engine": engine,
                "batch": batch,
                "ms": ms[name],
                "vs_merged_torch": median_ratio(times, name, "merged"),
                "params": count_parameters(model),
                "flops": count_flops(model, x),
            })
    return rows


# ---- RepMLPNet (CVPR 2022) -----------------------------------------------------------------------


def _with_fc3_impl(model: nn.Module, impl: str) -> nn.Module:
    """A deep copy of ``model`` whose RepMLPNet blocks run FC3 as ``impl`` (``"matmul"`` or ``"conv"``)."""
    copied = copy.deepcopy(model)
    for block in copied.modules():
        if isinstance(block, RepMLPNetBlock):
            block.fc3_impl = impl
    return copied


def repmlpnet_table(
    quick: bool = False, device: str = "cpu", rounds: int = 3, min_run_time: float = 0.1
) -> list[dict[str, Any]]:
    """RepMLPNet-B224 (random weights, random BN statistics): the training form against the deployed
    form (Locality Injection and every BN folded), and the deployed net with FC3 as a grouped 1x1
    conv (the authors' way) against FC3 as a batched matmul (ours); then FC3 alone, stage by stage.
    Ratios are latency over latency, each the median of per-round ratios.
    """
    torch.manual_seed(0)
    train_form = randomize_bn(create_model("repmlpnet_b224")).to(device).eval()
    merged = deploy(train_form)
    merged_conv = _with_fc3_impl(merged, "conv")
    rows = []
    for batch in (1,) if quick else (1, 8):
        x = torch.randn(batch, 3, 224, 224, device=device)
        fns = {"train": train_form, "deployed": merged, "deployed_conv": merged_conv}
        times = interleaved_ms(fns, x, rounds, min_run_time)
        ms = median_ms(times)
        rows.append({
            "table": "repmlpnet",
            "what": "RepMLPNet-B224",
            "batch": batch,
            "deployed/train": median_ratio(times, "deployed", "train"),
            "conv/matmul": median_ratio(times, "deployed_conv", "deployed"),
            "train_ms": ms["train"],
            "deployed_ms": ms["deployed"],
            "conv_ms": ms["deployed_conv"],
            "params_train": count_parameters(train_form),
            "params_deployed": count_parameters(merged),
        })
    blocks = [m for m in merged.modules() if isinstance(m, RepMLPNetBlock)]
    firsts = [b for i, b in enumerate(blocks) if i == 0 or b.h != blocks[i - 1].h]  # one block per stage
    for block in firsts:
        hw = block.h * block.w
        x = torch.randn(8 * block.channels // block.sets, block.sets * hw, device=device)  # batch 8, one partition
        fns = {
            "matmul": lambda v, b=block: fc3_forward(v, b.fc3_weight, b.fc3_bias, b.sets, "matmul"),
            "conv": lambda v, b=block: fc3_forward(v, b.fc3_weight, b.fc3_bias, b.sets, "conv"),
        }
        times = interleaved_ms(fns, x, rounds, min_run_time)
        ms = median_ms(times)
        rows.append({
            "table": "repmlpnet",
            "what": f"FC3 h={block.h} S={block.sets} C={block.channels}",
            "batch": 8,
            "conv/matmul": median_ratio(times, "conv", "matmul"),
            "deployed_ms": ms["matmul"],
            "conv_ms": ms["conv"],
        })
    return rows


# The authors' README (DingXiaoH/RepMLP): parameters (M, training form) and FLOPs (G multiply-adds).
REPMLPNET_README = {
    "repmlpnet_t224": (38.3, 2.8), "repmlpnet_b224": (68.2, 6.7), "repmlpnet_t256": (58.7, 4.2),
    "repmlpnet_b256": (96.5, 9.6), "repmlpnet_d256": (86.9, 8.6), "repmlpnet_l256": (117.7, 11.5),
}


def repmlpnet_count_table() -> list[dict[str, Any]]:
    """The six zoo RepMLPNets counted on the meta device (no memory, no arithmetic): parameters of the
    training form and multiply-adds of the deployed form at batch 1, next to the README's figures;
    ``*_match``: ours, rounded to the README's one decimal, prints the same."""
    rows = []
    for name, (params_m, gmacs) in REPMLPNET_README.items():
        resolution = int(name[-3:])
        with torch.device("meta"):
            model = create_model(name)
            params = count_parameters(model)
            macs = count_flops(deploy(model), torch.empty(1, 3, resolution, resolution)) // 2
        rows.append({
            "model": name, "params_M": params / 1e6, "readme_params_M": params_m,
            "params_match": f"{params / 1e6:.1f}" == f"{params_m:.1f}",
            "GMACs": macs / 1e9, "readme_GMACs": gmacs, "macs_match": f"{macs / 1e9:.1f}" == f"{gmacs:.1f}",
        })
    return rows


# ---- the command line ------------------------------------------------------------------------------

# Columns printed per table (all columns go to the CSV): ratios first, then the times behind them.
COLUMNS = {
    "block": ["C", "h", "P", "groups", "batch", "merged/bare", "floor/bare", "merged/train", "merged/conv",
              "merged_ms", "bare_ms", "bare_layout", "copies_ms", "train_ms", "conv_ms", "copies", "io_bytes"],
    "bottleneck": ["kind", "C", "h", "groups", "batch", "merged/train", "merged/resnet",
                   "train_ms", "merged_ms", "resnet_ms", "params_merged", "params_resnet"],
    "deploy": ["what", "C", "fc_kernel_entries", "ms"],
    "engine": ["model", "engine", "batch", "ms", "vs_merged_torch", "params", "flops"],
    "repmlpnet": ["what", "batch", "deployed/train", "conv/matmul", "train_ms", "deployed_ms", "conv_ms",
                  "params_train", "params_deployed"],
    "paper": ["net", "baseline", "batch", "measured", "paper", "net_ms", "baseline_ms", "target", "met"],
    "profile": ["op", "calls", "self_ms", "share"],
}


def machine() -> str:
    """One line: CPU model, threads, torch version (and the GPU when there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}{gpu}"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as an aligned plain-text table of ``columns``."""
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """All rows of all tables in one CSV; the column ``table`` says which table a row is from."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m repmlp_lite.bench", description="Measured costs of RepMLP: training form, merged form, limits."
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="a few settings only (well under a minute on a CPU)")
    parser.add_argument("--csv", metavar="PATH", help="also write every row to this CSV file")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row (default 3)")
    parser.add_argument("--min-run-time", type=float, default=0.1, help="seconds per timing (default 0.1)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--repmlpnet", action="store_true", help="also time RepMLPNet-B224 (training vs deployed, FC3 conv vs matmul)"
    )
    parser.add_argument("--repmlpnet-only", action="store_true", help="time RepMLPNet-B224 only")
    parser.add_argument("--paper", action="store_true",
                        help="only the paper's speed claims: deployed zoo nets vs ResNet-50/101 (CPU, 2 threads)")
    parser.add_argument("--blocks-only", action="store_true",
                        help="only the block sweep, merged form against its bare matmuls (no training form, no conv)")
    args = parser.parse_args(argv)
    if args.paper:
        return paper_main(args.quick, args.rounds, args.min_run_time, args.threads or 2, args.csv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.threads:
        torch.set_num_threads(args.threads)

    timing = dict(rounds=args.rounds, min_run_time=args.min_run_time)
    print(f"# {machine()}; device {args.device}; {args.rounds} rounds x {args.min_run_time} s per timing")
    if args.repmlpnet_only:
        tables = {"repmlpnet": repmlpnet_table(args.quick, args.device, **timing)}
        return _report(tables, args.csv)
    tables = {"block": block_table(args.quick, args.device, **timing, baselines=not args.blocks_only)}
    if not args.blocks_only:
        tables["bottleneck"] = bottleneck_table(args.quick, args.device, **timing)
        tables["deploy"] = deploy_table(args.quick, args.device)
    if args.device == "cpu" and not args.blocks_only:
        tables["engine"] = engine_table(args.quick, **timing)
    if args.repmlpnet:
        tables["repmlpnet"] = repmlpnet_table(args.quick, args.device, **timing)
    return _report(tables, args.csv)


def _report(tables: dict[str, list[dict[str, Any]]], csv_path: str | None) -> list[dict[str, Any]]:
    """Print every table, write all rows to ``csv_path`` if given; return the rows."""
    rows = []
    for name, table in tables.items():
        print(f"\n## {name}\n{format_table(table, COLUMNS[name])}")
        rows += table
    if csv_path:
        write_csv(rows, csv_path)
        print(f"\nwrote {len(rows)} rows to {csv_path}")
    return rows


def paper_main(
    quick: bool, rounds: int, min_run_time: float, threads: int, csv_path: str | None = None
) -> list[dict[str, Any]]:
    """``--paper``: :func:`repmlp_lite.paper_speed.speed_table` at batch 1 and 8 (``quick``: 8 only),
    then a profile of the deployed RepMLP-Res50 and Light nets at batch 8 where a target was missed."""
    from . import paper_speed  # builds the full-size zoo nets: only when asked for

    nets = paper_speed.deployed_nets()
    print(f"# {machine()}; {threads} threads; {rounds} rounds x {min_run_time} s per timing")
    rows = paper_speed.speed_table((8,) if quick else (1, 8), rounds, min_run_time, threads, nets)
    print(f"\n## paper: throughput ratio net / baseline, here and in the paper (GTX 1080Ti, batch 128)\n"
          f"{format_table(rows, COLUMNS['paper'])}")
    for name in dict.fromkeys(row["net"] for row in rows if row["met"] is False):
        top = paper_speed.profile_table(nets[name], 8, threads=threads)
        print(f"\n## where {name} spends its time (batch 8, self CPU time)\n{format_table(top, COLUMNS['profile'])}")
    if csv_path:
        write_csv(rows, csv_path)
        print(f"\nwrote {len(rows)} rows to {csv_path}")
    return rows


if __name__ == "__main__":
    main()
