"""Where a merged RepMLP block's time and memory traffic go.

* :class:`BareMatmuls`: the merged block's three matrix products alone, on ready-made operands, in
  three weight layouts: the limit any forward of the block can reach. Its copies are the merged
  forward's own (:mod:`repmlp_lite.fast_forward`), not a re-implementation; FC3's operand is
  :func:`grouped_input`.
* :func:`copy_bytes`: the bytes a forward writes outside its matrix products (a ``TorchDispatchMode``).
* :func:`time_breakdown`: a forward's time split by ``torch.profiler`` into products, copies and
  the global perceptron (:data:`TIME_CATEGORIES`).

:mod:`repmlp_lite.bench` runs them over the block sweep; chapter 6 calls them directly.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from . import fast_forward
from .block import RepMLPBlock, unpartition
from .measure import quiet_stderr


def grouped_input(block: RepMLPBlock, x: torch.Tensor) -> torch.Tensor:
    """The merged FC3's operand in ``block``: ``(N, C, H, W) -> (g, N*P, C/g*h*w)`` (``P = H/h * W/w``), with
    the global perceptron's correction already added (:func:`repmlp_lite.fast_forward.grouped_input` on the
    block's tensors): the operand of :meth:`~repmlp_lite.block.RepMLPBlock.reference_forward`, in the layout
    of :meth:`~repmlp_lite.block.RepMLPBlock.merged_forward`."""
    gp = block.global_perceptron
    return fast_forward.grouped_input(x, block.groups, block.h, block.w, None if gp is None else gp.from_pooled)


class BareMatmuls:
    """The merged block's three matrix products alone, on ready-made operands, in two layouts.

    FC1 ``(N, C*P) x (C*P, C*P/rho)``, FC2 ``(N, C*P/rho) x (C*P/rho, C*P)``
    (``rho = fc1_fc2_reduction``) and FC3 as one batched matmul over the groups, ``(g, M, C*h*w/g) x (g, C*h*w/g, O*h*w/g)`` (``P`` partitions per
    image, ``M = N*P``). The operands are the very ones the merged block multiplies on ``x``
    (FC3's from :func:`grouped_input`, FC1's captured by a forward hook), so
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
                self.fc3_input = grouped_input(block, x).contiguous()  # (g, M, in/g)
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
        operand (:func:`~repmlp_lite.fast_forward.grouped_partitions`) and a product back to a
        map (:func:`~repmlp_lite.fast_forward.ungrouped_output`), the merged forward's own functions. As in the merged forward,
        the copy in writes into a buffer kept from call to call, the copy out into a new tensor,
        and both are views for one image of one partition."""
        b = self.block
        copy_in = fast_forward.grouped_partitions(x, b.groups, b.h, b.w, self._operand)
        return copy_in, fast_forward.ungrouped_output(self.fc3_product, b.out_channels, b.H, b.W, b.h, b.w)

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
