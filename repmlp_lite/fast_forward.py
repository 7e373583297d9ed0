"""The merged RepMLP block's forward, written for speed on a CPU (what a merged
:class:`~repmlp_lite.block.RepMLPBlock` runs).

After merging, the block is FC1 and FC2 (the global perceptron) and one grouped FC3. The readable
form, :meth:`~repmlp_lite.block.RepMLPBlock.reference_forward`, partitions, multiplies and
unpartitions, each a copy. :func:`merged_forward` moves the data as little as it can:

* one copy from ``(N, C, H, W)`` straight into the grouped matmul's operand ``(g, N*P, C/g*h*w)``
  (:func:`grouped_partitions`, by row gathers, :func:`gather_rows`), the global perceptron's
  correction added to that operand in place (:func:`grouped_input`);
* one batched matmul that adds FC3's bias;
* one copy back to ``(N, O, H, W)`` (:func:`ungrouped_output`).

With one partition per image there is no copy in; for one image of one partition a large weight is
multiplied from the left (:data:`WEIGHT_LEFT_BYTES`); and on the CPU without autograd the two
intermediates are written into buffers reused from call to call (:class:`Workspace`).

Measured while writing this (one thread, an AMD EPYC with 32 MiB L3; ``python -m repmlp_lite.bench``
times the merged block against its bare matrix products, :class:`repmlp_lite.block_costs.BareMatmuls`):

* row gathers (``index_select`` of rows of ``w`` numbers) against PyTorch's strided copy of the same
  permute: the strided copy runs an inner loop only ``w`` long and was 1x to 4x slower;
* the reused buffers: freshly allocated intermediates paid a page fault on every 4 KiB, every call
  (glibc's ``malloc`` hands large freed blocks back to the system); for a 6 MiB operand (batch 32,
  C = 64, 28x28, g = 8) that made the block 1.6x as slow;
* the weight on the left: see :data:`WEIGHT_LEFT_BYTES`.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable

import torch

__all__ = [
    "WEIGHT_LEFT_BYTES",
    "Workspace",
    "gather_rows",
    "grouped_input",
    "grouped_partitions",
    "merged_forward",
    "tracing",
    "ungrouped_output",
    "workspace",
]


def _row_order(sizes: tuple[int, ...], dims: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``arange`` over a tensor of ``sizes``, permuted by ``dims`` and flattened: ``(prod(sizes),)`` int64.

    Gathering rows with it (``index_select``) is the copy ``t.view(sizes).permute(dims)`` made
    contiguous, for a tensor ``t`` whose last dimension (not in ``sizes``) is kept whole.
    """
    return torch.arange(math.prod(sizes), device=device).view(sizes).permute(dims).reshape(-1)


_cached_row_order = functools.lru_cache(maxsize=32)(_row_order)


WEIGHT_LEFT_BYTES = 16 * 2**20
"""From this size on, the merged FC3 of one image of one partition runs as ``W @ x`` (weight on the left).

A weight that does not stay in the CPU's cache between calls is read from memory each time, and
MKL's matrix-vector product reads it fastest with the weight on the left, row by row as stored:
0.57x to 0.8x the time of ``x @ W^T`` for 20 to 128 MiB weights with groups, the same time with
``g = 1`` (one thread, AMD EPYC, 32 MiB L3); for 5 to 10 MiB weights, which stay in the cache, it
took 1.1x to 1.3x. ``python -m repmlp_lite.bench`` times both forms (layouts ``"weight left"`` and
``"as stored"``).
"""


def tracing() -> bool:
    """Whether a tracer, compiler or exporter runs the forward (where the batch size may be symbolic)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


class Workspace(threading.local):
    """Buffers for the merged forward's two intermediates (FC3's operand and product), one set per
    thread, reused from call to call and shared by all merged blocks (each is done with them when
    its forward returns).

    Why: glibc's ``malloc`` hands large freed blocks back to the system, so a forward that
    allocated its intermediates afresh paid a page fault on every 4 KiB of them, every call; for
    a 6 MiB operand (batch 32, C = 64, 28x28, g = 8) that made the block 1.6x as slow. CPU only:
    PyTorch's CUDA allocator already keeps its memory. A buffer grows to the largest need seen and
    is kept while its thread lives (two operand-sized tensors per thread and dtype).
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A buffer of ``shape`` with ``like``'s dtype and device; its contents are garbage."""
        key = (name, like.dtype, like.device, torch.is_inference_mode_enabled())
        numel = math.prod(shape)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = self.buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buffer[:numel].view(shape)


workspace = Workspace()


def gather_rows(
    t: torch.Tensor, w: int, sizes: tuple[int, ...], dims: tuple[int, ...], out: torch.Tensor | None = None
) -> torch.Tensor:
    """``t`` as rows of ``w`` contiguous numbers, ``(prod(sizes), w)``, reordered as ``view(sizes).permute(dims)``.

    One copy. A row is ``w`` numbers contiguous in both layouts, so ``index_select`` moves it in
    one piece; PyTorch's strided copy of the same permute runs an inner loop only ``w`` long and
    was 1x to 4x slower in the settings measured while writing this. The index depends on shapes
    only and is cached, except while tracing or exporting (:func:`tracing`). ``out``: write there
    (``(prod(sizes), w)``, contiguous) instead of a new tensor.
    """
    order = (_row_order if tracing() else _cached_row_order)(sizes, dims, t.device)
    return torch.index_select(t.reshape(-1, w), 0, order, out=out)


def grouped_partitions(
    x: torch.Tensor, groups: int, h: int, w: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The ``h x w`` partitions of ``x`` by group: ``(N, C, H, W) -> (g, N*P, C/g, h*w)`` (``P = H/h * W/w``;
    rows ordered image, partition row, partition column).

    One copy (:func:`gather_rows`), into ``out`` when given (any contiguous tensor of as many
    elements). With one partition per image (``P = 1``) there is nothing to rearrange: a view
    of ``x``, strided over the groups, and ``out`` is not used.
    """
    n, c, height, width = x.shape
    g, hp, wp = groups, height // h, width // w
    if hp * wp == 1:
        return x.reshape(n, g, c // g, -1).transpose(0, 1)
    # x as rows of w numbers: (N, g, C/g, H/h, h, W/w) -> (g, N, H/h, W/w, C/g, h)
    rows = gather_rows(x, w, (n, g, c // g, hp, h, wp), (1, 0, 3, 5, 2, 4),
                       None if out is None else out.view(-1, w))
    return rows.view(g, n * hp * wp, c // g, h * w)


def grouped_input(
    x: torch.Tensor,
    groups: int,
    h: int,
    w: int,
    correction: Callable[[torch.Tensor], torch.Tensor] | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The merged FC3's operand: ``(N, C, H, W) -> (g, N*P, C/g*h*w)``, with the global perceptron's
    correction already added.

    :func:`grouped_partitions` (one copy of ``x``, into ``out`` when given), then the correction
    ``v = correction(pooled)`` (``(N, C, H/h, W/w)`` from the partitions' means, one value per
    channel and partition; the global perceptron's ``from_pooled``) added in place: FC3 sees
    ``x + v``, as in the training form. ``correction`` is ``None`` without a global perceptron
    and may be given only when ``P > 1`` (then the operand is a copy, not ``x``).
    """
    n, c, height, width = x.shape
    g, hp, wp = groups, height // h, width // w
    parts = grouped_partitions(x, groups, h, w, out)
    if correction is not None:
        pooled = parts.mean(-1).view(g, n, hp, wp, c // g).permute(1, 0, 4, 2, 3)  # (N, g, C/g, H/h, W/w)
        v = correction(pooled.reshape(n, c, hp, wp))
        parts += v.view(n, g, c // g, hp * wp).permute(1, 0, 3, 2).reshape(g, -1, c // g, 1)
    return parts.flatten(2)


def ungrouped_output(out: torch.Tensor, out_channels: int, height: int, width: int, h: int, w: int) -> torch.Tensor:
    """The merged FC3's product back to a map: ``(g, N*P, O/g*h*w) -> (N, O, H, W)``.

    One copy (:func:`gather_rows`); with ``P = 1`` only the groups move (a view when ``g = 1``).
    """
    g, o, hp, wp = out.shape[0], out_channels, height // h, width // w
    n = out.shape[1] // (hp * wp)
    if hp * wp == 1:
        return out.transpose(0, 1).contiguous().view(n, o, height, width)
    # (g, N, H/h, W/w, O/g, h) rows of w numbers -> (N, g, O/g, H/h, h, W/w) = (N, O, H, W)
    rows = gather_rows(out, w, (g, n, hp, wp, o // g, h), (1, 0, 4, 2, 5, 3))
    return rows.view(n, o, height, width)


def merged_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    groups: int,
    h: int,
    w: int,
    correction: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """A merged block's forward: ``(N, C, H, W) -> (N, O, H, W)`` with FC3 ``weight (O*h*w, C*h*w/g)``
    and ``bias (O*h*w,)`` and the global perceptron's ``correction`` (see :func:`grouped_input`).

    :func:`grouped_input` (one copy in), FC3 as one ``baddbmm`` over the groups on the weight
    as stored ``(g, O/g*h*w, C/g*h*w)`` (read transposed, no copy) with the bias added by the
    matmul, and :func:`ungrouped_output` (one copy out); both copies are views for one image
    of one partition. That case is a matrix-vector product per group, and a weight of at least
    :data:`WEIGHT_LEFT_BYTES` goes on the left there, ``W @ x``, read row by row as stored.

    On the CPU, without autograd (``torch.no_grad``, ``torch.inference_mode``) and with more
    than one partition, the operand and the product are written into buffers kept from call to
    call (:class:`Workspace`); the output is always a new tensor. The input is not checked here.
    """
    g = groups
    n, _, height, width = x.shape
    o = weight.shape[0] // (h * w)
    parts = (height // h) * (width // w)
    weight = weight.view(g, -1, weight.shape[1])  # (g, O/g*h*w, C/g*h*w)
    big = weight.numel() * weight.element_size() >= WEIGHT_LEFT_BYTES
    # (tracing before the batch size: comparing a symbolic one to 1 would fix it at 1)
    if big and not tracing() and n * parts == 1:
        # x as (g, C/g*h*w, 1) by transposing rows (g, 1, C/g*h*w): the strides MKL takes for a
        # column (a plain reshape's were 10x slower in places)
        column = x.reshape(g, 1, -1).transpose(1, 2)
        out = torch.baddbmm(bias.view(g, -1, 1), weight, column)  # (g, O/g*h*w, 1)
        return out.view(1, o, height, width)
    operand = product = None
    # not with one partition: ungrouped_output may then return the product itself as the output
    if parts > 1 and x.device.type == "cpu" and not torch.is_grad_enabled() and not tracing():
        operand = workspace.get("operand", (g, n * parts, weight.shape[2]), x)
        product = workspace.get("product", (g, n * parts, weight.shape[1]), x)
    operand = grouped_input(x, g, h, w, correction, operand)
    out = torch.baddbmm(bias.view(g, 1, -1), operand, weight.transpose(1, 2), out=product)
    return ungrouped_output(out, o, height, width, h, w)
