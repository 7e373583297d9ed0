"""Counting and timing: parameters, FLOPs (torch's FlopCounterMode) and latency (torch.utils.benchmark)."""

from __future__ import annotations

from collections.abc import Callable

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
