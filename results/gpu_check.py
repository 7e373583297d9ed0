"""The package's GPU checks in one call, for a session that has a GPU (issue 23); everything goes under OUT.

    PYTHONPATH=. python results/gpu_check.py OUT            # on a GPU (estimated: 5 to 7 minutes on an H200)
    PYTHONPATH=. python results/gpu_check.py OUT --quick    # a CPU in place of the GPU (12 minutes on 2 cores)

1. The unit tests (``tests/``, neither the notebooks nor the book's build and browser checks), with
   CUDA visible: ``OUT/unit_tests.txt``.
2. ``check_equivalence`` on the paper's networks (random weights and BN statistics, batch 32) under
   torch's default flags: it turns TF32 off itself, so float32 must read at most 1e-5 relative. For
   the record, also the training form against the merged form with the default flags' TF32 convs,
   and the merge in float64.
3. The training command (``small_repmlp_resnet`` on the digits, 2 epochs): two ``--deterministic``
   runs, and one killed with SIGKILL at step 25 and resumed, must end with the same bits; each run's
   final check must read at most 1e-5 (``max_rel_logit_diff``, TF32 off).
4. ``python -m repmlp_lite.bench --paper --device cuda``: the paper's speed claims at batch 128 in
   fp32 (TF32 off), torch's default flags, TF32 and bf16: ``OUT/paper_gpu.csv``, ``OUT/bench_paper.txt``.
5. ``results/deterministic_cost.py``: what ``--deterministic`` costs the training command there (3 rounds).

``OUT/summary.json`` holds every result and a ``passed`` flag per check, with the provenance (GPU,
torch, date, commit); its ``equivalence`` and ``speed`` parts have the layout of
``results/gpu_h200.json``, so that a session can commit it as the figures of its GPU. The script exits
with status 1 if a check failed. On a machine without a GPU it runs on the CPU (``--quick``: one test
file, batch 2, the bench's quick mode), which is how it was tried before any GPU session ran it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repmlp_lite import check_equivalence, create_model, deploy  # noqa: E402  (the checkout's package)
from repmlp_lite.measure import randomize_bn  # noqa: E402
from repmlp_lite.measured import checkout_commit  # noqa: E402
from repmlp_lite.paper_speed import CLAIMS, GPU_MODES  # noqa: E402
from repmlp_lite.precision import float32_precision  # noqa: E402

TOLERANCE = 1e-5  # float32, relative: the book's bar for a merge on any device
# The book's build and browser checks, which need jupyter-book, Chromium or JupyterLab (not this check's)
BOOK_TESTS = ("book", "browser", "colab", "exercises", "figures", "glue", "jupyterlab", "static_controls")
NETS = {  # the paper's networks and their input side
    "repmlp_res50_light_224": 224,
    "repmlp_res50_224": 224,
    "repmlpnet_t224": 224,
    "repmlp_pure_mlp_cifar": 32,
}


def _run(command: list[str], log: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``command`` from the repository root with the checkout's package; its output goes to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    log.write_text(f"$ {' '.join(command)}\n# exit {proc.returncode}, {time.perf_counter() - started:.0f} s\n"
                   f"{proc.stdout}\n{proc.stderr}")
    return proc


def unit_tests(out: Path, quick: bool) -> dict[str, Any]:
    """The package's test files; a test that fails only for a library this machine lacks (the book's
    extras: matplotlib, IPython, ...) is listed apart, as is a file that cannot be collected."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if p.stem.removeprefix("test_") not in BOOK_TESTS)
    files = ["tests/test_precision.py"] if quick else files
    command = [sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-q", "-rfE",
               "--continue-on-collection-errors", *files]
    try:
        import xdist  # noqa: F401  (pytest-xdist: spread the tests over the cores when it is there)

        command[3:3] = ["-n", str(min(8, os.cpu_count() or 1))]
    except ImportError:
        pass
    proc = _run(command, out / "unit_tests.txt", timeout=1800)
    lines = proc.stdout.strip().splitlines()
    problems = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    missing = [line for line in problems if "No module named" in line]
    not_collected = [line for line in problems if line.startswith("ERROR ") and "::" not in line.split()[1]]
    failed = [line for line in problems if line not in missing and line not in not_collected]
    return {
        "command": " ".join(command[1:]),
        "summary": lines[-1] if lines else "",
        "failed": failed,
        "failed_for_a_missing_library": missing,
        "files_not_collected": not_collected,
        "passed": not failed and proc.returncode in (0, 1),
    }


@torch.no_grad()
def equivalence(device: str, batch: int) -> dict[str, Any]:
    rows = {}
    for name, side in NETS.items():
        torch.manual_seed(0)
        net = randomize_bn(create_model(name)).to(device).eval()
        shape = (batch, 3, side, side)
        off = check_equivalence(net, shape, dtype=torch.float32)  # turns TF32 off itself
        merged = deploy(net)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
        with float32_precision(tf32_convs=True, tf32_matmuls=False):  # torch's default flags
            expected, actual = net(x), merged(x)
        default = ((actual - expected).abs().max() / expected.abs().max()).item()
        rows[name] = {
            "tf32_default": default,
            "tf32_off": off.max_rel,
            "float64": check_equivalence(net, shape, dtype=torch.float64).max_rel,
            "precision": str(off.precision),
        }
        print(f"  {name}: {rows[name]}", flush=True)
    return {
        "what": f"max relative output difference, training form (eval mode) against deploy(...), batch {batch}, "
        "random BN statistics",
        "columns": {
            "tf32_default": "float32, torch's default flags (TF32 in cuDNN convs) for both forward passes",
            "tf32_off": "float32, check_equivalence (TF32 off)",
            "float64": "float64, check_equivalence (merged and compared in float64)",
        },
        "rows": rows,
        "passed": all(row["tf32_off"] <= TOLERANCE for row in rows.values()),
    }


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=False)["model"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def training(out: Path, device: str) -> dict[str, Any]:
    base = [sys.executable, "-m", "repmlp_lite.train", "--model", "small_repmlp_resnet", "--data", "digits",
            "--epochs", "2", "--device", device, "--deterministic"]
    runs = {}
    for name in ("first", "second"):
        proc = _run([*base, "--out", str(out / name)], out / f"train_{name}.txt", timeout=900)
        runs[name] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    killed = [*base, "--save-every", "10", "--out", str(out / "killed")]
    proc = _run([*killed, "--kill-after-steps", "25"], out / "train_killed.txt", timeout=900)
    was_killed = proc.returncode == -signal.SIGKILL
    proc = _run([*killed, "--resume"], out / "train_resumed.txt", timeout=900)
    runs["resumed"] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    if any(record is None for record in runs.values()):
        return {"passed": False, "error": "a run failed: see OUT/train_*.txt", "finals": runs}
    first, second, resumed = _state(out / "first"), _state(out / "second"), _state(out / "killed")
    equal_runs = all(torch.equal(first[k], second[k]) for k in first)
    equal_resumed = all(torch.equal(first[k], resumed[k]) for k in first)
    finals = {name: {k: record[k] for k in ("top1", "agreement", "max_rel_logit_diff", "check_precision")}
              for name, record in runs.items()}
    return {
        "command": " ".join(base[1:]),
        "two_deterministic_runs_bitwise_equal": equal_runs,
        "max_abs_param_diff_runs": _max_diff(first, second),
        "killed_at_step_25": was_killed,
        "resumed_bitwise_equal_to_uninterrupted": equal_resumed,
        "max_abs_param_diff_resumed": _max_diff(first, resumed),
        "finals": finals,
        "passed": equal_runs and equal_resumed and was_killed
        and all(f["max_rel_logit_diff"] <= TOLERANCE and f["agreement"] == 1.0 for f in finals.values()),
    }


def speed(out: Path, device: str, quick: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "repmlp_lite.bench", "--paper", "--device", device,
               "--csv", str(out / "paper_gpu.csv"), *(["--quick", "--rounds", "1"] if quick else [])]
    proc = _run(command, out / "bench_paper.txt", timeout=1200)
    if proc.returncode != 0:
        return {"passed": False, "error": "the bench failed: see OUT/bench_paper.txt"}
    with open(out / "paper_gpu.csv") as f:
        rows = list(csv.DictReader(f))
    if device == "cpu":  # the CPU path's table: no precision modes
        return {"command": " ".join(command[1:]), "rows": rows, "passed": True}
    modes = list(dict.fromkeys(row["mode"] for row in rows))
    ratios = [
        {"net": net, "baseline": baseline, **{row["mode"]: round(float(row["measured"]), 3) for row in rows
                                             if (row["net"], row["baseline"]) == (net, baseline)}}
        for net, baseline, _ in CLAIMS
    ]
    images = {mode: {row["net"]: round(float(row["net_images_per_s"])) for row in rows if row["mode"] == mode}
              | {row["baseline"]: round(float(row["baseline_images_per_s"])) for row in rows if row["mode"] == mode}
              for mode in modes}
    return {
        "command": " ".join(command[1:]),
        "what": "deployed zoo nets, 224x224, interleaved rounds (torch.utils.benchmark, CUDA synchronised); "
        "throughput ratios net / baseline are medians of per-round ratios",
        "batch": int(rows[0]["batch"]),
        "modes": {mode: GPU_MODES[mode] for mode in modes},
        "ratios": ratios,
        "images_per_s": images,
        "passed": True,
    }


def deterministic_cost(out: Path, device: str, quick: bool) -> dict[str, Any]:
    rounds = ["--rounds", "1", "--steps", "2"] if quick else ["--rounds", "3"]
    command = [sys.executable, "results/deterministic_cost.py", "--device", device, *rounds]
    proc = _run(command, out / "deterministic_cost.txt", timeout=900)
    median = re.search(r"median of the per-round ratios: ([\d.]+)", proc.stdout)
    return {"command": " ".join(command[1:]), "with_over_without_images_per_s": float(median.group(1)) if median
            else None, "passed": proc.returncode == 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the logs and summary.json")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="one test file, batch 2, the bench's quick mode")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    commit = checkout_commit()
    summary: dict[str, Any] = {"provenance": {
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else f"none: {platform.processor() or 'CPU'}",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "package": commit,
        "measured_by": f"results/gpu_check.py{' --quick' if args.quick else ''} on the package at {commit}",
        "device": args.device,
    }}
    steps = {
        "unit_tests": lambda: unit_tests(args.out, args.quick),
        "equivalence": lambda: equivalence(args.device, 2 if args.quick else 32),
        "training_command": lambda: training(args.out, args.device),
        "speed": lambda: speed(args.out, args.device, args.quick),
        "deterministic_cost": lambda: deterministic_cost(args.out, args.device, args.quick),
    }
    for name, step in steps.items():
        started = time.perf_counter()
        print(f"{name} ...", flush=True)
        try:
            summary[name] = step()
        except Exception as error:  # one failed check must not hide the others' results
            summary[name] = {"passed": False, "error": f"{type(error).__name__}: {error}"}
        summary[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {'passed' if summary[name]['passed'] else 'FAILED'} in {summary[name]['seconds']} s",
              flush=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    summary["passed"] = all(summary[name]["passed"] for name in steps)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"all passed: {summary['passed']}; {args.out / 'summary.json'}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
