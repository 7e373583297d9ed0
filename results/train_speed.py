"""Benchmark behind results/train_speed.md: the training command's time per step against a bare loop.

    PYTHONPATH=. python results/train_speed.py [--rounds 3] [--steps 10]

For each data set (the digits; a CIFAR-format directory of 2,000 random images written to a temporary
directory), in rounds, alternately: the command (``repmlp_lite.train.run``, one epoch of ``steps``
steps; its ``images_per_s`` covers the training loop only, not the evaluation or the merge) and a bare
loop that does only forward, backward and step on the same model, optimiser, batch and images, taken
from memory. The ratio is taken within each round, then its median. Then the loader alone: images per
second of the command's DataLoader with 0, 1 and 2 workers. Prints Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from repmlp_lite.data import build_splits
from repmlp_lite.recipe import make_optimizer
from repmlp_lite.train import parse_args, run
from repmlp_lite.zoo import create_model

print = functools.partial(print, flush=True)  # progress shows in a redirected file


def write_cifar(root: Path, n_train: int = 2000, n_test: int = 200) -> Path:
    """CIFAR-10's published layout with random pixels and labels."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in (("data_batch_1", n_train), ("test_batch", n_test)):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n)),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


def command_step_s(data: str, out: Path, steps: int, batch: int) -> float:
    """Seconds per training step of the command (one epoch of ``steps`` steps), from its own log."""
    args = parse_args(
        [
            "--model",
            "small_repmlp_resnet",
            "--data",
            data,
            "--epochs",
            "1",
            "--batch-size",
            str(batch),
            "--limit-train",
            str(steps * batch),
            "--workers",
            "0",
            "--out",
            str(out),
        ]
    )
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run(args)
    first = next(line for line in (out / "log.jsonl").read_text().splitlines() if '"epoch"' in line)
    images_per_s = float(first.split('"images_per_s": ')[1].rstrip("}"))
    (out / "log.jsonl").unlink()
    return batch / images_per_s


def bare_step_s(data: str, steps: int, batch: int) -> float:
    """Seconds per step of forward + backward + step alone, on the command's model and its first images."""
    splits = build_splits(data, 32)
    if steps * batch > len(splits.train):
        raise ValueError(f"--steps x --batch-size = {steps * batch} exceeds the {len(splits.train)} training "
                         f"images of {data!r} (one epoch); use at most {len(splits.train) // batch} steps")
    x, y = next(iter(DataLoader(Subset(splits.train, range(steps * batch)), batch_size=steps * batch)))
    torch.manual_seed(0)
    model = create_model("small_repmlp_resnet", num_classes=10, in_channels=splits.in_channels, image_size=32)
    optimizer = make_optimizer(model, "sgd", 0.05 * batch / 64, 5e-4)
    model.train()
    start = time.perf_counter()
    for i in range(steps):
        loss = F.cross_entropy(model(x[i * batch : (i + 1) * batch]), y[i * batch : (i + 1) * batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def loader_images_per_s(data: str, workers: int, batch: int, images: int) -> float:
    """Images per second through the command's training DataLoader (augmentation included), no model."""
    splits = build_splits(data, 32)
    loader = DataLoader(
        Subset(splits.train, range(images)), batch_size=batch, num_workers=workers, shuffle=True
    )
    start = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    cifar = str(write_cifar(tmp / "cifar"))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average at start "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    print(
        "| data | command s/step | bare loop s/step | command / bare (median of rounds) | ratio per round |"
    )
    print("|---|---|---|---|---|")
    for name, data in (("digits", "digits"), ("CIFAR-format, 2,000 random images", cifar)):
        cmd, bare = [], []
        for r in range(a.rounds):
            cmd.append(command_step_s(data, tmp / f"run_{len(name)}_{r}", a.steps, a.batch_size))
            bare.append(bare_step_s(data, a.steps, a.batch_size))
        ratios = [c / b for c, b in zip(cmd, bare)]
        print(
            f"| {name} | {statistics.median(cmd):.3f} | {statistics.median(bare):.3f} | "
            f"{statistics.median(ratios):.3f} | {', '.join(f'{r:.2f}' for r in ratios)} |"
        )
    print("\n| data | loader images/s, 0 workers | 1 worker | 2 workers |")
    print("|---|---|---|---|")
    for name, data in (("digits", "digits"), ("CIFAR-format (pad-crop + flip)", cifar)):
        speeds = [loader_images_per_s(data, w, a.batch_size, 1280) for w in (0, 1, 2)]
        print(f"| {name} | " + " | ".join(f"{s:,.0f}" for s in speeds) + " |")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
