"""The benchmark behind chapter 6, ``python -m repmlp_lite.bench``: sweeps and the command line.

* :func:`count_table`: parameters and FLOPs of a block by partition size and groups (no timing).
* :func:`block_table`: RepMLP blocks over partition sizes, partitions per image, channels, groups
  and batch sizes. Latency of the merged form against its three matrix products alone
  (:class:`~repmlp_lite.block_costs.BareMatmuls`, in the best of three weight layouts: the limit),
  and of the training form (eval mode) and a 3x3 conv + BN + ReLU with the same input and output;
  the bytes the merged form writes outside its products (:func:`~repmlp_lite.block_costs.copy_bytes`).
* :func:`bottleneck_table`: the RepMLP bottleneck and Light block against the plain ResNet bottleneck.
* :func:`net_vs_layers`: a whole net against the sum of its layers.
* :func:`deploy_table`: how long :func:`~repmlp_lite.conv_as_fc.conv_to_fc` and a whole-model
  :func:`~repmlp_lite.reparameterize.deploy` take, against the size of the FC kernels they build.
* :func:`~repmlp_lite.export.engine_table`: the merged net in PyTorch against onnxruntime.
* RepMLPNet and the paper's speed claims: :mod:`repmlp_lite.paper_speed`.

The primitives (counting, interleaved timing, medians of ratios, BN randomisation) are in
:mod:`repmlp_lite.measure`, the block's limit, copied bytes and profile in
:mod:`repmlp_lite.block_costs`; the names the chapters use (``bench.count_flops``,
``bench.BareMatmuls``, ...) are imported here, so ``from repmlp_lite import bench`` reaches them all.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from . import paper_speed, train_step_speed
from .block import RepMLPBlock
from .block_costs import TIME_CATEGORIES, BareMatmuls, copy_bytes, time_breakdown
from .conv_as_fc import conv_to_fc
from .export import engine_table
from .layers import conv_bn_relu
from .measure import (
    count_flops,
    count_parameters,
    interleaved_ms,
    latency_ms,
    machine,
    median_ms,
    median_ratio,
    randomize_bn,
)
from .nets import RepMLPBottleneck, ResNetBottleneck, repmlp_light_block, small_repmlp_resnet
from .paper_speed import repmlpnet_count_table, repmlpnet_table
from .reparameterize import deploy

__all__ = [  # the sweeps and the CLI, and the primitives the chapters reach through ``bench``
    "TIME_CATEGORIES", "BareMatmuls", "block_configs", "block_table", "bottleneck_configs", "bottleneck_table",
    "copy_bytes", "count_flops", "count_parameters", "count_table", "deploy_table", "engine_table",
    "format_table", "interleaved_ms", "latency_ms", "machine", "main", "measure_block", "measure_bottleneck",
    "median_ms", "median_ratio", "net_vs_layers", "randomize_bn", "repmlpnet_count_table", "repmlpnet_table",
    "time_breakdown", "write_csv",
]

# ---- counting only: parameters and FLOPs ------------------------------------------------------------


def count_table(
    channels: int = 32, size: int = 16, hs: Sequence[int] = (2, 4, 8), groups: Sequence[int] = (1, 2, 4, 8)
) -> list[dict[str, Any]]:
    """Parameters and FLOPs per image of a ``C -> C`` block on ``size x size`` maps, for every partition
    size ``h = w`` in ``hs`` and every ``g`` in ``groups``: training form, merged form and the 3x3 conv
    baseline, all counted (:func:`~repmlp_lite.measure.count_parameters`, :func:`~repmlp_lite.measure.count_flops`). For comparison, the paper's
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

    Times, interleaved: the merged form, its :class:`~repmlp_lite.block_costs.BareMatmuls` in each layout (``bare_ms`` is
    the fastest layout, named in ``bare_layout``), and with ``baselines`` the training form (eval
    mode) and the conv baseline (3x3 conv + BN + ReLU). Ratios: ``merged/bare`` (per round, over
    the fastest layout of that round), ``merged/train``, ``merged/conv``. Also parameters, FLOPs
    and ``copies``: bytes per image the merged form writes outside its products (:func:`~repmlp_lite.block_costs.copy_bytes`),
    next to ``io_bytes``, its input plus output per image. ``copies_ms`` times the copy in and
    the copy out alone (:meth:`~repmlp_lite.block_costs.BareMatmuls.copies`), and ``floor/bare`` is ``(bare + copies) /
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
    All are timed interleaved (:func:`~repmlp_lite.measure.interleaved_ms`). Returns ``net_ms``, ``layers_ms`` (the
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
            "ms": _once_ms(lambda kernel=kernel: conv_to_fc(kernel, 8, 8), repeats),
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
            "ms": _once_ms(lambda model=model: deploy(model), repeats),
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
    "paper_gpu": ["mode", "net", "baseline", "measured", "paper", "net_ms", "baseline_ms", "net_images_per_s"],
    "profile": ["op", "calls", "self_ms", "share"],
} | train_step_speed.COLUMNS


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
    parser = argparse.ArgumentParser(prog="python -m repmlp_lite.bench",
                                     description="Measured costs of RepMLP: training form, merged form, limits.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="a few settings only (well under a minute on a CPU)")
    parser.add_argument("--csv", metavar="PATH", help="also write every row to this CSV file")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row (default 3)")
    parser.add_argument("--min-run-time", type=float, default=0.1, help="seconds per timing (default 0.1)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--repmlpnet", action="store_true",
                        help="also time RepMLPNet-B224 (training vs deployed, FC3 conv vs matmul)")
    parser.add_argument("--repmlpnet-only", action="store_true", help="time RepMLPNet-B224 only")
    parser.add_argument("--paper", action="store_true", help="only the paper's speed claims: deployed zoo nets vs "
                        "ResNet-50/101 (CPU: 2 threads; --device cuda: batch 128 in fp32, TF32 and bf16)")
    parser.add_argument("--blocks-only", action="store_true",
                        help="only the block sweep, merged form against its bare matmuls (no training form, no conv)")
    train_step_speed.add_options(parser)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.paper:
        return paper_main(args.quick, args.rounds, args.min_run_time, args.threads or 2, args.csv, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    timing = dict(rounds=args.rounds, min_run_time=args.min_run_time)
    print(f"# {machine()}; device {args.device}; {args.rounds} rounds x {args.min_run_time} s per timing")
    if args.train_step:  # (bad input: parser.error, one line and exit status 2)
        return _report(train_step_speed.run(args, parser.error), args.csv)
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
        print(f"\n## {name}\n{format_table(table, COLUMNS[name.split()[0]])}")
        rows += table
    if csv_path:
        write_csv(rows, csv_path)
        print(f"\nwrote {len(rows)} rows to {csv_path}")
    return rows


def paper_main(quick: bool, rounds: int, min_run_time: float, threads: int, csv_path: str | None = None,
               device: str = "cpu") -> list[dict[str, Any]]:
    """``--paper``: on the CPU, ``speed_table`` at batch 1 and 8 (``quick``: 8) and a profile of each net that
    missed its target; on a GPU, ``gpu_speed_table`` at batch 128 (``quick``: 32) (:mod:`~repmlp_lite.paper_speed`)."""
    nets = paper_speed.deployed_nets()
    print(f"# {machine()}; {rounds} rounds x {min_run_time} s per timing; {threads if device == 'cpu' else 'all'} "
          "threads\n# throughput ratio net / baseline, here and in the paper (GTX 1080Ti, batch 128)")
    if device == "cuda":
        table = paper_speed.gpu_speed_table(nets, device, 32 if quick else 128, rounds, min_run_time)
        return _report({"paper_gpu": table}, csv_path)
    table = paper_speed.speed_table((8,) if quick else (1, 8), rounds, min_run_time, threads, nets)
    rows = _report({"paper": table}, csv_path)
    for name in dict.fromkeys(row["net"] for row in rows if row["met"] is False):
        top = paper_speed.profile_table(nets[name], 8, threads=threads)
        print(f"\n## where {name} spends its time (batch 8, self CPU time)\n{format_table(top, COLUMNS['profile'])}")
    return rows


if __name__ == "__main__":
    main()
