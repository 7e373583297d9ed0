"""A training step on a GPU, before and after the fast training form: one call, under 5 minutes on an H200.

    PYTHONPATH=. python results/train_step_gpu.py OUT_DIR           # on a machine with a GPU
    PYTHONPATH=. python results/train_step_gpu.py OUT_DIR --tiny    # the same steps, tiny, on a CPU (the tests)

Every figure is ``repmlp_lite.train_step_speed.compare_steps``: one optimiser step (forward, backward,
SGD; the batch already on the device; CUDA-synchronised) of the reference formulation (the training
form as the package had it before, "before") against the fast training form ("after"), timed in
interleaved rounds, with PyTorch's default settings (TF32 convolutions on, as the training command
runs). In this order:

1. the targets of issue 24, ``repmlpnet_t224`` and ``repmlp_pure_mlp_cifar`` at batch 128, bf16 and
   fp32 autocast, with the top kernels of both forms by self GPU time;
2. the targets' fast form compiled (bf16; the reference stays eager, as the command ran before):
   ``torch.compile`` mode ``default`` for T224, ``reduce-overhead`` (CUDA graphs: the pure MLP's eager
   step is bound by its ~1,000 kernel launches) for the pure MLP;
3. every other zoo model that has a layer of ``repmlp_lite.fast_training``, batch 128, bf16, no profile
   (issue 24: no zoo model slower than before).

No setting starts after ``--budget-s`` seconds (default 210); those left are listed as skipped. A
setting that fails (out of memory, a compiler error) is reported as failed, and the rest run.
Prints everything and writes OUT_DIR/train_step.csv (one row per model, precision and compile mode),
OUT_DIR/kernels.csv (the profiles), OUT_DIR/environment.json (GPU, torch, date, command, what was
skipped) and OUT_DIR/summary.md (all of it, and the targets: met or not).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from repmlp_lite.bench import format_table, write_csv
from repmlp_lite.fast_training import PartitionBatchNorm1d, PartitionBatchNorm2d, PartitionConv2d
from repmlp_lite.measured import checkout_commit
from repmlp_lite.train_step_speed import COLUMNS, GPU_TARGETS, compare_steps
from repmlp_lite.zoo import create_model, list_models

COMPILE_MODES = {"repmlpnet_t224": "default", "repmlp_pure_mlp_cifar": "reduce-overhead"}
SLOWER = 0.97  # a zoo model counts as slower than before below this speed-up (timing noise is ~1-2%)
ROW_COLUMNS = ["setting", *COLUMNS["train_step"]]
KERNEL_COLUMNS = ["model", "precision", *COLUMNS["step_profile"]]


def with_fast_layers() -> list[str]:
    """The zoo names whose model has a layer of :mod:`repmlp_lite.fast_training` (built on the meta device)."""
    fast = (PartitionBatchNorm1d, PartitionBatchNorm2d, PartitionConv2d)
    with torch.device("meta"):
        return [name for name in list_models() if any(isinstance(m, fast) for m in create_model(name).modules())]


def settings(tiny: bool) -> list[dict[str, Any]]:
    """What to measure, in order (module docstring); ``tiny``: the same kinds of setting on small nets, batch 4."""
    targets = ["small_repmlpnet"] if tiny else list(GPU_TARGETS)
    others = ["small_repmlp_resnet"] if tiny else [n for n in with_fast_layers() if n not in GPU_TARGETS]
    batch = 4 if tiny else 128
    eager = [dict(setting="target", name=name, batch=batch, precision=precision, top=10)
             for name in targets for precision in ("bf16", "fp32")]
    zoo = [dict(setting="zoo", name=name, batch=batch, precision="bf16", top=0) for name in others]
    compiled = [dict(setting="compiled", name=name, batch=batch, precision="bf16", top=0,
                     compile_mode=COMPILE_MODES.get(name, "default")) for name in targets]
    return eager + compiled + zoo


def environment(device: str, argv: list[str]) -> dict[str, Any]:
    """The machine, the software and the command, for the record."""
    return {
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "package_commit": checkout_commit(),
        "command": " ".join(["python", "results/train_step_gpu.py", *argv]),
    }


def target_lines(rows: list[dict[str, Any]], tiny: bool) -> list[str]:
    """Issue 24's targets, met or not, from the rows measured."""
    lines = []
    for name, goal in GPU_TARGETS.items():
        best = [r for r in rows if r["model"] == name and r["precision"] == "bf16" and r["batch"] == 128]
        if best:
            top = max(best, key=lambda r: r["fast_img_s"])
            how = f"compiled ({top['compile']})" if top["compile"] else "eager"
            met = "met" if top["fast_img_s"] >= goal else "NOT met"
            lines.append(f"- {name}, bf16, batch 128: {top['fast_img_s']:,.0f} images/s ({how}) "
                         f"against the target {goal:,.0f}: {met}")
    zoo = [r for r in rows if r["setting"] == "zoo"]
    slower = [f"{r['model']} ({r['fast/reference']:.3f})" for r in zoo if r["fast/reference"] < SLOWER]
    if zoo:
        lines.append(f"- zoo models measured: {len(zoo)}; slower than before (speed-up below {SLOWER}): "
                     f"{', '.join(slower) or 'none'}")
    return lines or ["- (tiny run: no target applies)" if tiny else "- nothing measured"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python results/train_step_gpu.py", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the CSV files, environment.json and summary.md")
    parser.add_argument("--tiny", action="store_true", help="small nets at batch 4 on the CPU: a check of the script")
    parser.add_argument("--budget-s", type=float, default=210.0, help="start no setting after this many seconds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per setting (default 3)")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per timing (default 0.2)")
    args = parser.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no GPU is visible (--tiny runs the same steps on the CPU)")
    start = time.perf_counter()
    env = environment(device, argv)
    print(json.dumps(env), flush=True)
    rows, kernels, skipped, failed = [], [], [], []
    for setting in settings(args.tiny):
        label = f"{setting['setting']} {setting['name']} {setting['precision']} {setting.get('compile_mode', '')}"
        if time.perf_counter() - start > args.budget_s:
            skipped.append(label.strip())
            continue
        setting = dict(setting)
        kind, name = setting.pop("setting"), setting.pop("name")
        try:
            row, profile = compare_steps(name, device=device, rounds=args.rounds, min_run_time=args.min_run_time,
                                         **setting)
        except Exception as err:  # out of memory, a compiler error: report it, measure the rest
            failed.append(f"{label.strip()}: {type(err).__name__}: {str(err).strip().splitlines()[0][:300]}")
            print(f"{label.strip()}: FAILED ({failed[-1]})", flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
            continue
        rows.append({"setting": kind, **row})
        kernels += profile
        print(f"{label.strip()}: before {row['reference_img_s']:,.0f}, after {row['fast_img_s']:,.0f} images/s "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    env |= {"skipped": skipped, "failed": failed, "seconds": round(time.perf_counter() - start)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "train_step.csv")
    write_csv(kernels, args.out / "kernels.csv")
    (args.out / "environment.json").write_text(json.dumps(env, indent=1) + "\n")
    summary = [
        "# A training step, before (reference formulation) and after (fast training form)", "",
        *(f"- {key}: {value}" for key, value in env.items()), "", "## Targets", "", *target_lines(rows, args.tiny),
        "", "## Images/s", "", "```", format_table(rows, ROW_COLUMNS), "```",
    ]
    for (name, precision) in dict.fromkeys((k["model"], k["precision"]) for k in kernels):
        table = [k for k in kernels if (k["model"], k["precision"]) == (name, precision)]
        summary += ["", f"## Top kernels: {name}, {precision}", "", "```", format_table(table, KERNEL_COLUMNS), "```"]
    (args.out / "summary.md").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
