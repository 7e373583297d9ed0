"""The merged RepMLP block of this checkout against the same block of the package at another commit.

For each setting of ``repmlp_lite.bench.block_configs()`` (or an evenly spaced subset of them): one
training-form block built by the old package (as the block sweep builds it: ``C -> C``, ``h x h``
partitions, FC1 reduction 4, random BN statistics), the same weights loaded into this checkout's block,
both merged by their own package's ``deploy``; then

* ``same_weights``: the two merged state dicts are equal, bit for bit;
* ``same_output``: the two merged forwards return equal tensors, bit for bit;
* ``new/old``: this checkout's latency over the old one's, the median of the per-round ratios of
  ``repmlp_lite.measure.interleaved_ms`` (one thread, the two timed in turn in every round).

The old package is read from git (``git archive``) into a temporary folder and imported under another
name, beside this checkout's ``repmlp_lite``. Run from the checkout's root:

    PYTHONPATH=$PWD python results/merged_block_speed.py --base 96e00c1            # all settings
    PYTHONPATH=$PWD python results/merged_block_speed.py --base 96e00c1 --subset 20
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from repmlp_lite import bench, deploy
from repmlp_lite.block import RepMLPBlock
from repmlp_lite.measure import interleaved_ms, machine, median_ms, median_ratio, randomize_bn, torch_threads

ROOT = Path(__file__).resolve().parents[1]


def old_package(commit: str, where: Path) -> ModuleType:
    """``repmlp_lite`` as it was at ``commit``, imported as ``repmlp_old`` from a copy under ``where``."""
    archive = subprocess.run(["git", "archive", commit, "repmlp_lite"], cwd=ROOT, check=True, capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(where, filter="data")
    init = where / "repmlp_lite" / "__init__.py"
    spec = importlib.util.spec_from_file_location("repmlp_old", init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["repmlp_old"] = module
    spec.loader.exec_module(module)
    return module


def compare(old: ModuleType, config: dict[str, int], rounds: int, min_run_time: float) -> dict[str, object]:
    """One setting: the old and the new merged block, same weights; equality and the latency ratio."""
    c, h, g, n, parts = config["channels"], config["h"], config["groups"], config["batch"], config["parts"]
    size = parts * h
    torch.manual_seed(0)
    old_train = old.RepMLPBlock(c, c, size, size, h, h, g, fc1_fc2_reduction=4)
    randomize_bn(old_train, 0).eval()
    new_train = RepMLPBlock(c, c, size, size, h, h, g, fc1_fc2_reduction=4).eval()
    new_train.load_state_dict(old_train.state_dict(), strict=True)
    old_merged, new_merged = old.deploy(old_train), deploy(new_train)
    del old_train, new_train
    old_state, new_state = old_merged.state_dict(), new_merged.state_dict()
    same_weights = old_state.keys() == new_state.keys()
    same_weights = same_weights and all(torch.equal(v, new_state[k]) for k, v in old_state.items())
    x = torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch_threads(1):
        same_output = torch.equal(old_merged(x), new_merged(x))
        times = interleaved_ms({"old": old_merged, "new": new_merged}, x, rounds, min_run_time)
    ms = median_ms(times)
    return {
        "C": c, "H": size, "h": h, "P": parts**2, "groups": g, "batch": n,
        "same_weights": same_weights, "same_output": same_output,
        "new/old": median_ratio(times, "new", "old"), "old_ms": ms["old"], "new_ms": ms["new"],
        "rounds_new/old": " ".join(f"{a / b:.3f}" for a, b in zip(times["new"], times["old"])),
    }


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="96e00c1", help="the commit to compare with (default: 96e00c1)")
    p.add_argument("--subset", type=int, default=0, help="an evenly spaced subset of this many settings (0: all)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-run-time", type=float, default=0.1)
    p.add_argument("--csv", type=Path, help="write the rows here too")
    args = p.parse_args(argv)
    configs = bench.block_configs()
    if args.subset:
        step = len(configs) / args.subset
        configs = [configs[int(i * step)] for i in range(args.subset)]
    print(f"# {machine()}; load average {os.getloadavg()[0]:.1f} at the start; {len(configs)} settings; "
          f"this checkout against {args.base}; 1 thread, {args.rounds} interleaved rounds", flush=True)
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as where:
        old = old_package(args.base, Path(where))
        for config in configs:
            row = compare(old, config, args.rounds, args.min_run_time)
            rows.append(row)
            print(", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    ratios = [r["new/old"] for r in rows]
    print(f"# {len(rows)} settings in {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.1f} at "
          f"the end; new/old: median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}; "
          f"bit-identical outputs in {sum(bool(r['same_output']) for r in rows)} of {len(rows)}, "
          f"merged weights in {sum(bool(r['same_weights']) for r in rows)} of {len(rows)}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
