"""Measurement primitives: counting parameters and FLOPs, timing (interleaved rounds, medians of
ratios), random BN statistics for checks and benchmarks, and a line describing the machine.

Everything here imports only torch and the standard library: counting a model's parameters does
not import the benchmark (:mod:`repmlp_lite.bench`), its sweeps or onnx.

Timing is interleaved: every variant of one row is timed once per round, round after round, so
a slow moment of a shared machine hits all of them. A latency is the median over the rounds of
``Timer.blocked_autorange``'s median; a ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode


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


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` intra-op threads (``None``: unchanged), then restore the count."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
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


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters everywhere in ``model`` (as after training).

    Per BN of ``n`` features: running mean ``0.1 * N(0, 1)``, running variance in ``[0.5, 1.5)``,
    weight in ``[0.5, 1.5)``, bias ``0.1 * N(0, 1)`` (when affine), from one generator seeded with
    ``seed``. ``model`` may be a BN itself. Returns ``model``, changed in place (its mode unchanged).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if bn.affine:
                    bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    bn.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


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
