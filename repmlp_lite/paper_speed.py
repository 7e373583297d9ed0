"""The paper's speed claims, measured here: deployed zoo nets against ResNet-50/101 at 224x224.

The RepMLP paper (Tables 4 and 7) reports throughput on a GTX 1080Ti at batch 128: RepMLP-Res50 636
examples/s, its Light variant 1074, ResNet-50 689, ResNet-101 421. So it claims the Light net runs at
1.56x ResNet-50's throughput, and RepMLP-Res50 at 1.51x ResNet-101's (0.92x ResNet-50's).
:func:`speed_table` times the deployed nets here (every RepMLP merged, every conv + BN fused),
interleaved round by round, and gives each throughput ratio as the median of the per-round ratios
beside the paper's. :func:`profile_table` says where a net spends its time (``torch.profiler``).
``python -m repmlp_lite.bench --paper`` prints both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .bench import interleaved_ms, median_ms, median_ratio, quiet_stderr, randomize_bn
from .deploy import deploy
from .zoo import create_model

# examples/s on one GTX 1080Ti, batch 128 (paper, Tables 4 and 7)
PAPER_THROUGHPUT = {
    "resnet50_224": 689, "resnet101_224": 421, "repmlp_res50_224": 636, "repmlp_res50_light_224": 1074,
}
# (net, baseline, the target this project set for its throughput ratio on a CPU at batch 8)
CLAIMS: tuple[tuple[str, str, float], ...] = (
    ("repmlp_res50_light_224", "resnet50_224", 1.10),
    ("repmlp_res50_224", "resnet50_224", 1.0),
    ("repmlp_res50_224", "resnet101_224", 1.4),
)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` intra-op threads (``None``: unchanged), then restore the count."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def deployed_nets(names: Sequence[str] = tuple(PAPER_THROUGHPUT), seed: int = 0) -> dict[str, nn.Module]:
    """The zoo nets ``names`` with random weights and BN statistics, deployed (eval mode)."""
    nets = {}
    for name in names:
        torch.manual_seed(seed)
        nets[name] = deploy(randomize_bn(create_model(name), seed))
    return nets


@torch.no_grad()
def speed_table(
    batches: Sequence[int] = (1, 8),
    rounds: int = 3,
    min_run_time: float = 0.1,
    threads: int | None = 2,
    nets: dict[str, nn.Module] | None = None,
) -> list[dict[str, Any]]:
    """One row per claim of :data:`CLAIMS` and batch size: measured and published throughput ratios.

    ``measured`` is ``baseline_ms / net_ms`` (throughput of the net over that of the baseline), the
    median over ``rounds`` interleaved rounds; ``paper`` the same ratio of the paper's examples/s.
    ``target`` (batch 8 only) is the ratio this project asked of a CPU; ``met`` says if it was reached.
    """
    nets = deployed_nets() if nets is None else nets
    rows = []
    with torch_threads(threads):
        for batch in batches:
            x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
            times = interleaved_ms(nets, x, rounds, min_run_time)
            ms = median_ms(times)
            for net, baseline, target in CLAIMS:
                measured = median_ratio(times, baseline, net)
                rows.append({
                    "table": "paper",
                    "net": net,
                    "baseline": baseline,
                    "batch": batch,
                    "threads": torch.get_num_threads(),
                    "measured": measured,
                    "paper": PAPER_THROUGHPUT[net] / PAPER_THROUGHPUT[baseline],
                    "net_ms": ms[net],
                    "baseline_ms": ms[baseline],
                    "target": target if batch == 8 else None,
                    "met": (measured >= target) if batch == 8 else None,
                })
    return rows


@torch.no_grad()
def profile_table(net: nn.Module, batch: int = 8, top: int = 8, threads: int | None = 2) -> list[dict[str, Any]]:
    """The ``top`` operators by self CPU time in one forward pass of ``net`` on ``(batch, 3, 224, 224)``.

    Columns: ``op``, ``calls``, ``self_ms`` and ``share`` (of the total self CPU time).
    """
    x = torch.randn(batch, 3, 224, 224)
    with torch_threads(threads):
        net(x)  # warm-up
        with quiet_stderr(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            net(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [
        {"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total}
        for e in ranked
    ]
