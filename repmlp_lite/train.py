"""Training: the book's notebook loop (:func:`train`), and the command ``python -m repmlp_lite.train``.

The notebooks call :func:`train` (one process, a tqdm bar, the digits). The command trains any zoo
model on the digits, an ImageFolder or CIFAR, on a CPU or GPUs, under ``torchrun`` with
DistributedDataParallel, resumable from ``DIR/last.pt``, and ends with the model merged
(:func:`repmlp_lite.deploy`) and checked on the whole validation set. ``python -m repmlp_lite.train -h``
lists its options; the book's appendix "Training the paper's networks" shows three ways to run it.
Defaults and where they come from: :mod:`repmlp_lite.recipe`. Data: :mod:`repmlp_lite.datasets`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, check_fits, load_checkpoint, rng_states, save_atomic, set_rng_states
from .datasets import Augmented, DataError, Splits, build_splits, download_cifar
from .fast_training import COMPILE_MODES, for_speed
from .finish import evaluate, finish, log_record
from .recipe import Recipe, make_optimizer, recipe_for, warmup_cosine
from .runtime import (
    ResumableSampler,
    Runtime,
    UsageError,
    autocast,
    build_model,
    init_distributed,
    reduce_values,
    setup_runtime,
)


def pick_device() -> torch.device:
    """``cuda`` when a GPU is present, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int = 0) -> None:
    """Fix Python's, NumPy's and torch's random seeds."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class History:
    """Per-epoch mean training loss and test accuracy."""

    train_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Logits ``(N, num_classes)`` of ``model`` in eval mode over ``dataset``, on the CPU."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size)
    return torch.cat([model(x.to(device)).cpu() for x, _ in loader])


def accuracy(logits: torch.Tensor, dataset: Dataset) -> float:
    """Fraction of ``dataset``'s labels that ``logits.argmax(1)`` gets right."""
    labels = torch.cat([y for _, y in DataLoader(dataset, batch_size=len(dataset))])
    return (logits.argmax(1) == labels).float().mean().item()


def train(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    epochs: int,
    device: torch.device,
    batch_size: int = 64,
    lr: float = 0.05,
    seed: int = 0,
    desc: str = "train",
    progress: bool = True,
) -> History:
    """SGD with momentum and a cosine schedule; cross-entropy; one tqdm bar over all steps
    (``progress=False``: none).

    ``model`` is moved to ``device`` and trained in place.
    """
    seed_everything(seed)
    model.to(device)
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    if len(loader) == 0:
        raise ValueError(
            f"batch_size={batch_size} is larger than the training set ({len(train_set)} examples)"
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss()
    history = History()
    # dynamic_ncols: in a notebook the bar widget takes the output's width and wraps its parts as
    # whole pieces, instead of squeezing the label until it breaks ("RepMLP-" / "ResNet: 100%").
    with tqdm(total=epochs * len(loader), desc=desc, dynamic_ncols=True, disable=not progress) as bar:
        for _ in range(epochs):
            model.train()
            total = 0.0
            for x, y in loader:
                loss = loss_fn(model(x.to(device)), y.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item()
                bar.update()
            history.train_loss.append(total / len(loader))
            history.test_accuracy.append(accuracy(predict(model, test_set, device), test_set))
            bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", test_acc=f"{history.test_accuracy[-1]:.3f}")
    return history


# ---- the command: python -m repmlp_lite.train ---------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command's options; ``None`` defaults are filled from the model's :class:`~repmlp_lite.recipe.Recipe`."""
    p = argparse.ArgumentParser(prog="python -m repmlp_lite.train", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a list_models() name, e.g. small_repmlp_resnet")
    p.add_argument(
        "--data", required=True, help="'digits', an ImageFolder root (train/, val/) or a CIFAR dir"
    )
    p.add_argument("--out", required=True, type=Path, help="run directory: log.jsonl, last.pt, deployed.pt")
    p.add_argument(
        "--image-size", type=int, help="input side S (default: 32 for digits/CIFAR, 224 otherwise)"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch: each of N torchrun processes takes B/N")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, scaled by B)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"))
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--clip-grad", type=float, help="max gradient norm (0: none)")
    p.add_argument("--num-classes", type=int, help="default: the number of classes in the data")
    p.add_argument(
        "--model-kwargs", default="{}", help="JSON keyword arguments for the builder, e.g. '{\"width\": 8}'"
    )
    p.add_argument("--limit-train", type=int, help="train on a fixed random subset of N images")
    p.add_argument("--download", choices=("cifar10", "cifar100"), help="fetch CIFAR into --data first")
    p.add_argument("--resume", action="store_true", help="continue from DIR/last.pt")
    p.add_argument(
        "--save-every", type=int, default=0, help="also checkpoint every N steps (0: epoch ends only)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers",
        type=int,
        help="DataLoader workers per process (default: 0 for digits, else up to 8 per process)",
    )
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    p.add_argument("--sync-bn", action="store_true", help="BatchNorm -> SyncBatchNorm under DDP (GPUs only)")
    p.add_argument(
        "--freeze-bn", action="store_true", help="BN layers use their running statistics (fine-tuning)"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES, metavar="MODE",
                   help=f"torch.compile the model with this mode ({', '.join(COMPILE_MODES)}; default: default)")
    p.add_argument("--channels-last", action="store_true", help="the model in the channels-last memory format")
    p.add_argument("--kill-after-steps", type=int, default=0, help=argparse.SUPPRESS)  # tests: SIGKILL itself
    return p.parse_args(argv)


def _loader(
    dataset: Dataset, batch_size: int, workers: int, rt: Runtime, sampler: Any = None, seed: int = 0
) -> DataLoader:
    """Batches of ``(x (B, C, S, S), y (B,))``; its own generator, so that making an iterator does not
    draw from torch's global one (a resumed run makes one more iterator than an uninterrupted one)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=sampler is not None,
        pin_memory=rt.device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _settings(args: argparse.Namespace, recipe: Recipe, splits: Splits) -> argparse.Namespace:
    """``args`` with every ``None`` default filled from ``recipe`` and the data; checks the numbers."""
    for key in (
        "epochs",
        "batch_size",
        "optimizer",
        "weight_decay",
        "warmup_epochs",
        "label_smoothing",
        "clip_grad",
    ):
        if getattr(args, key) is None:
            setattr(args, key, getattr(recipe, key))
    if args.lr is None:
        args.lr = recipe.lr * args.batch_size / recipe.lr_batch
    if args.workers is None:
        args.workers = (
            0
            if splits.kind == "digits"
            else min(8, max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        )
    args.num_classes = args.num_classes or splits.num_classes
    for key in ("epochs", "batch_size", "num_classes"):
        if getattr(args, key) < 1:
            raise UsageError(
                f"--{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)}"
            )
    if args.num_classes < splits.num_classes:
        raise UsageError(f"--num-classes {args.num_classes}: the data has {splits.num_classes} classes")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, checkpoint, resume, deploy and check, as the options say; returns the last JSON record."""
    if args.amp == "fp16" and not (args.device != "cpu" and torch.cuda.is_available()):
        raise UsageError("--amp fp16 needs a GPU (its gradient scaler is CUDA's); on a CPU use --amp bf16")
    rt = setup_runtime(args.device)
    if args.sync_bn and rt.device.type != "cuda":
        raise UsageError("--sync-bn: torch's SyncBatchNorm runs on GPUs only; this run is on the CPU")
    try:
        extra = json.loads(args.model_kwargs)
        assert isinstance(extra, dict)
    except (json.JSONDecodeError, AssertionError):
        raise UsageError(f"--model-kwargs must be a JSON object, got {args.model_kwargs!r}") from None
    if args.download:
        download_cifar(args.download, Path(args.data))
    image_size = args.image_size or (
        224 if args.data != "digits" and (Path(args.data) / "train").is_dir() else 32
    )
    splits = build_splits(args.data, image_size, args.seed)
    args = _settings(args, recipe_for(args.model), splits)
    init_distributed(rt, args.batch_size)
    seed_everything(args.seed)
    model, kwargs = build_model(args.model, args.num_classes, splits.in_channels, image_size, extra)
    train_set = splits.train
    if args.limit_train:
        keep = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))[
            : args.limit_train
        ]
        train_set = Subset(train_set, keep.sort().values.tolist())
    local_batch = args.batch_size // rt.world
    sampler = ResumableSampler(train_set, rt.world, rt.rank, shuffle=True, seed=args.seed, drop_last=True)
    steps_per_epoch = len(sampler) // local_batch
    if steps_per_epoch == 0:
        raise UsageError(
            f"--batch-size {args.batch_size} is larger than the training set ({len(train_set)} images)"
        )
    val_loader = _loader(
        Subset(splits.val, range(rt.rank, len(splits.val), rt.world)), local_batch, args.workers, rt
    )

    model.to(rt.device)
    optimizer = make_optimizer(model, args.optimizer, args.lr, args.weight_decay)
    scheduler = warmup_cosine(
        optimizer,
        args.epochs * steps_per_epoch,
        round(args.warmup_epochs * steps_per_epoch),
        recipe_for(args.model).warmup_lr,
        args.lr,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp == "fp16")
    epoch, step, loss_sum = 0, 0, 0.0
    last = args.out / "last.pt"
    if args.resume:
        ckpt = load_checkpoint(last)
        if ckpt["model_name"] != args.model:
            raise CheckpointError(f"--resume: {last} is of model {ckpt['model_name']!r}, not {args.model!r}")
        check_fits(ckpt["model"], model.state_dict(), f"--resume: {last}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        epoch, step, loss_sum = ckpt["epoch"], ckpt["step"], ckpt["loss_sum"]
        set_rng_states(ckpt["rng"])
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.resume and rt.rank == 0:
        (args.out / "log.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log
    net: nn.Module = for_speed(model, channels_last=args.channels_last)  # before the DDP wrap, as DDP asks
    if args.sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if rt.world > 1:
        net = DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    net = for_speed(net, compile_mode=args.compile)  # after it, so that DDP's buckets split the graph
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    setup = {
        "model_name": args.model,
        "model_kwargs": kwargs,
        "num_classes": args.num_classes,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }

    def save() -> None:
        if rt.rank == 0:
            save_atomic(
                {
                    **setup,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "loss_sum": loss_sum,
                    "rng": rng_states(),
                },
                last,
            )

    bar = tqdm(
        total=args.epochs * steps_per_epoch,
        initial=epoch * steps_per_epoch + step,
        desc=args.model,
        dynamic_ncols=True,
        disable=rt.rank != 0,
    )
    while epoch < args.epochs:
        sampler.set_epoch(epoch, step * local_batch)
        if isinstance(splits.train, Augmented):
            splits.train.set_epoch(epoch)
        loader = _loader(train_set, local_batch, args.workers, rt, sampler, args.seed + epoch)
        _set_train_mode(net, args.freeze_bn)
        start, first_step = time.perf_counter(), step
        for x, y in loader:
            x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
            with autocast(args.amp, rt.device):
                loss = loss_fn(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(net.parameters(), args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.item()
            step += 1
            bar.update()
            if args.save_every and (epoch * steps_per_epoch + step) % args.save_every == 0:
                save()
            if args.kill_after_steps and epoch * steps_per_epoch + step == args.kill_after_steps:
                os.kill(os.getpid(), signal.SIGKILL)
        seconds = time.perf_counter() - start
        record = {
            "epoch": epoch + 1,
            "train_loss": reduce_values([loss_sum / step], rt)[0] / rt.world,
            **evaluate(model, val_loader, rt, args.amp),
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": (step - first_step) * args.batch_size / seconds,
        }
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", top1=f"{record['top1']:.3f}")
        epoch, step, loss_sum = epoch + 1, 0, 0.0
        save()
        log_record(args.out, record, rt)
    bar.close()
    return finish(model, setup, val_loader, rt, args.out)


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line; for an error re-raised from a DataLoader worker, its last line."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
    line = lines[-1] if len(lines) > 1 else lines[0]
    return re.sub(r"^[\w.]*(DataError|CheckpointError): ", "", line.strip())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the command (``argv``: its arguments; ``None``: ``sys.argv[1:]``); returns the last JSON record.

    Bad input: one line on stderr and ``SystemExit(2)``, never a traceback from inside torch.
    """
    args = parse_args(argv)
    try:
        return run(args)
    except (UsageError, DataError, CheckpointError) as err:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"python -m repmlp_lite.train: error: {_one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
