"""The zoo nets at full size, timed and counted: the paper's speed claims and RepMLPNet-B224.

The RepMLP paper (Tables 4 and 7) reports throughput on a GTX 1080Ti at batch 128: RepMLP-Res50 636
examples/s, its Light variant 1074, ResNet-50 689, ResNet-101 421. As ratios of those figures, the Light
net runs at 1.56x ResNet-50's throughput and RepMLP-Res50 at 1.51x ResNet-101's (0.92x ResNet-50's);
the paper's text says 55% and 50% faster (Sec. 4.2, Appendix A).
:func:`speed_table` times the deployed nets here (every RepMLP merged, every conv + BN fused),
interleaved round by round, and gives each throughput ratio as the median of the per-round ratios
beside the paper's. :func:`profile_table` says where a net spends its time (``torch.profiler``).
``python -m repmlp_lite.bench --paper`` prints both. On a GPU, :func:`gpu_speed_table` times the claims
at the paper's batch of 128 in each of :data:`GPU_MODES` (float32 with TF32 off, as on the paper's GTX
1080Ti; torch's default flags; TF32; bf16 autocast with channels_last): ``--paper --device cuda``.

RepMLPNet (CVPR 2022): :func:`repmlpnet_table` times RepMLPNet-B224's training and deployed forms and
FC3 as a conv (:class:`ConvFC3Block`) against FC3 as a matmul (``python -m repmlp_lite.bench --repmlpnet``);
:func:`repmlpnet_count_table` counts the six zoo RepMLPNets against the authors' README.
The published figures themselves are in :mod:`repmlp_lite.tables`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .measure import (
    count_flops,
    count_parameters,
    interleaved_ms,
    median_ms,
    median_ratio,
    quiet_stderr,
    randomize_bn,
    torch_threads,
)
from .precision import float32_precision
from .reparameterize import deploy
from .repmlpnet import RepMLPNetBlock, fc3_forward
from .tables import PAPER_THROUGHPUT, REPMLPNET_README
from .zoo import create_model

# the nets the claims compare, in the order they are timed
NETS = ("resnet50_224", "resnet101_224", "repmlp_res50_224", "repmlp_res50_light_224")
# (net, baseline, the target this project set for its throughput ratio on a CPU at batch 8)
CLAIMS: tuple[tuple[str, str, float], ...] = (
    ("repmlp_res50_light_224", "resnet50_224", 1.10),
    ("repmlp_res50_224", "resnet50_224", 1.0),
    ("repmlp_res50_224", "resnet101_224", 1.4),
)


def deployed_nets(names: Sequence[str] = NETS, seed: int = 0) -> dict[str, nn.Module]:
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


# The precisions the claims are timed in on a GPU (fp32: the paper's GTX 1080Ti has no TF32).
GPU_MODES = {
    "fp32": "float32, TF32 off",
    "default": "float32, torch's default flags: TF32 in cuDNN convs, not in matmuls",
    "tf32": "float32, TF32 in convs and matmuls",
    "bf16": "bfloat16 autocast, channels_last",
}


def _in_bf16(net: nn.Module) -> Callable[[torch.Tensor], Any]:
    """``net`` run under bfloat16 autocast on its input's device."""

    def run(x: torch.Tensor) -> Any:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return net(x)

    return run


@contextlib.contextmanager
def _gpu_mode(
    mode: str, nets: dict[str, nn.Module], x: torch.Tensor
) -> Iterator[tuple[dict[str, Callable[[torch.Tensor], Any]], torch.Tensor]]:
    """``nets`` (in place) and ``x`` in ``mode``'s memory layout, as callables, with its TF32 flags set."""
    layout = torch.channels_last if mode == "bf16" else torch.contiguous_format
    for net in nets.values():
        net.to(memory_format=layout)
    fns = {name: _in_bf16(net) if mode == "bf16" else net for name, net in nets.items()}
    with float32_precision(tf32_convs=mode != "fp32", tf32_matmuls=mode == "tf32"):
        yield fns, x.contiguous(memory_format=layout)


@torch.no_grad()
def gpu_speed_table(
    nets: dict[str, nn.Module] | None = None,
    device: str = "cuda",
    batch: int = 128,
    rounds: int = 5,
    min_run_time: float = 0.5,
    modes: Sequence[str] = tuple(GPU_MODES),
) -> list[dict[str, Any]]:
    """One row per precision mode of :data:`GPU_MODES` and claim of :data:`CLAIMS`, at the paper's batch
    size: ``measured`` throughput ratio (median of per-round ratios, interleaved; ``torch.utils.benchmark``
    synchronises CUDA), the ``paper``'s, latencies and images per second. ``nets`` are moved to ``device``."""
    nets = {name: net.to(device) for name, net in (deployed_nets() if nets is None else nets).items()}
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch)).to(device)
    rows = []
    for mode in modes:
        with _gpu_mode(mode, nets, x) as (fns, inputs):
            times = interleaved_ms(fns, inputs, rounds, min_run_time)
        ms = median_ms(times)
        for net, baseline, _ in CLAIMS:
            rows.append({
                "table": "paper_gpu", "mode": mode, "precision": GPU_MODES[mode], "net": net,
                "baseline": baseline, "batch": batch, "measured": median_ratio(times, baseline, net),
                "paper": PAPER_THROUGHPUT[net] / PAPER_THROUGHPUT[baseline], "net_ms": ms[net],
                "baseline_ms": ms[baseline], "net_images_per_s": batch / ms[net] * 1e3,
                "baseline_images_per_s": batch / ms[baseline] * 1e3,
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


# ---- RepMLPNet (CVPR 2022) -----------------------------------------------------------------------


class ConvFC3Block(RepMLPNetBlock):
    """A RepMLPNet block whose FC3 runs as a grouped 1x1 conv, the authors' way (:func:`fc3_forward` with
    ``"conv"``): the same parameters, buffers and numbers, another kernel; for timing only."""

    def fc3(self, rows: torch.Tensor) -> torch.Tensor:
        return fc3_forward(rows, self.fc3_weight, self.fc3_bias, self.sets, "conv")


def with_conv_fc3(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose RepMLPNet blocks are :class:`ConvFC3Block` s (their class swapped:
    the same state, FC3 as a conv)."""
    copied = copy.deepcopy(model)
    for block in copied.modules():
        if type(block) is RepMLPNetBlock:
            block.__class__ = ConvFC3Block
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
    merged_conv = with_conv_fc3(merged)
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
