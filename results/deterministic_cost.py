"""What ``--deterministic`` costs the training command: rounds that alternate one run without the flag and
one with it, the same run otherwise, each timed by the command itself (``images_per_s`` of its epoch
record: the training loop only); the cost is the median over rounds of the per-round ratio.

    PYTHONPATH=. python results/deterministic_cost.py --rounds 5 [--device cpu|cuda]

The run: ``small_repmlp_resnet`` on the digits, one epoch of ``--steps`` steps of ``--batch-size``, no
DataLoader workers. On a CPU the flag changes no kernel of this model (its ops are deterministic there
already), so a ratio near 1 is what to expect, and the spread of the rounds says how loaded the machine
was. On a GPU run it from a fresh process: cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when CUDA first uses
it, so the script sets it before that.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
from pathlib import Path

from repmlp_lite.measure import machine
from repmlp_lite.train import main as train


def images_per_s(deterministic: bool, device: str, steps: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        args = ["--model", "small_repmlp_resnet", "--data", "digits", "--epochs", "1", "--batch-size", str(batch),
                "--limit-train", str(steps * batch), "--workers", "0", "--device", device, "--out", out]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train([*args, *(["--deterministic"] if deterministic else [])])
        records = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    return next(r for r in records if "epoch" in r)["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts (a no-op on a CPU)
    print(f"# {machine()}; device {args.device}; load average {os.getloadavg()[0]:.1f} at the start")
    ratios = []
    print("round  images/s without  images/s with  with / without")
    for i in range(args.rounds):
        plain = images_per_s(False, args.device, args.steps, args.batch_size)
        exact = images_per_s(True, args.device, args.steps, args.batch_size)
        ratios.append(exact / plain)
        print(f"{i + 1:5d}  {plain:16.1f}  {exact:13.1f}  {ratios[-1]:14.3f}", flush=True)
    print(f"median of the per-round ratios: {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f} to {max(ratios):.3f}); load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
