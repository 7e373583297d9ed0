"""Training: the book's notebook loop (:func:`train`), and the command ``python -m repmlp_lite.train``.

The notebooks call :func:`train` (one process, a tqdm bar, the digits). The command trains any zoo
model on the digits, an ImageFolder or CIFAR, on a CPU or GPUs, under ``torchrun`` with
DistributedDataParallel, resumable from ``DIR/last.pt``, bit for bit repeatable with
``--deterministic`` (its log's first line says whether a run is), and ends with the model merged
(:func:`repmlp_lite.deploy`) and checked on the whole validation set, with TF32 off.
``python -m repmlp_lite.train -h`` lists its options (:func:`parse_args`); the book's appendix "Training
the paper's networks" shows three ways to run it. :func:`run` takes the steps of
:mod:`repmlp_lite.training_run` in order. Defaults and where they come from: :mod:`repmlp_lite.recipe`.
Data: :mod:`repmlp_lite.data`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import CheckpointError
from .data import DataError
from .fast_training import COMPILE_MODES
from .finish import finish
from .runtime import TrainingError, UsageError, deterministic_kernels, seed_everything
from .training_run import log_record, resume, save_checkpoint, set_up, start_log, train_one_epoch, validate


def pick_device() -> torch.device:
    """``cuda`` when a GPU is present, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from DIR/last.pt, or from CHECKPOINT (e.g. DIR/previous.pt, the one before it)",
    )
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
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels, for runs (also killed and resumed) that repeat bit for bit on a GPU",
    )
    p.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES, metavar="MODE",
                   help=f"torch.compile the model with this mode ({', '.join(COMPILE_MODES)}; default: default)")
    p.add_argument("--channels-last", action="store_true", help="the model in the channels-last memory format")
    p.add_argument("--kill-after-steps", type=int, default=0, help=argparse.SUPPRESS)  # tests: SIGKILL itself
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The command's run, step by step (:mod:`repmlp_lite.training_run`): set up, resume, then every epoch
    train, validate, checkpoint and log; finish (merge and check). Returns the last JSON record."""
    training = set_up(args)
    if args.resume:
        resume(training, args.out / "last.pt" if args.resume is True else Path(args.resume))
    start_log(training)
    total, done = args.epochs * training.steps_per_epoch, training.steps_done
    bar = tqdm(total=total, initial=done, desc=args.model, dynamic_ncols=True, disable=training.rt.rank != 0)
    try:
        while training.epoch < args.epochs:
            trained = train_one_epoch(training, bar)
            top1 = validate(training.model, training.val_loader, training.rt, args.amp)
            record = {"epoch": trained.pop("epoch"), "train_loss": trained.pop("train_loss"), **top1, **trained}
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", top1=f"{record['top1']:.3f}")
            training.epoch, training.step, training.loss_sum = training.epoch + 1, 0, 0.0
            save_checkpoint(training)
            log_record(args.out, record, training.rt)
    except BaseException:
        bar.leave = False  # the bar erases itself: an error's line stands alone
        raise
    finally:
        bar.close()
    return finish(training.model, training.setup, training.val_loader, training.rt, args.out)


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line; for an error re-raised from a DataLoader worker, its last line."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
    line = lines[-1] if len(lines) > 1 else lines[0]
    return re.sub(r"^[\w.]*(DataError|CheckpointError|TrainingError): ", "", line.strip())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the command (``argv``: its arguments; ``None``: ``sys.argv[1:]``); returns the last JSON record.

    Bad input: one line on stderr and ``SystemExit(2)``; a run that cannot go on (a loss that is not
    finite): one line and ``SystemExit(1)``; Ctrl-C: one line and ``SystemExit(130)``; never a traceback
    from inside torch.
    """
    args = parse_args(argv)
    try:
        with deterministic_kernels(args.deterministic, args.device):
            return run(args)
    except (UsageError, DataError, CheckpointError, TrainingError) as err:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"python -m repmlp_lite.train: error: {_one_line(err)}", file=sys.stderr)
        raise SystemExit(1 if isinstance(err, TrainingError) else 2) from None
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"python -m repmlp_lite.train: interrupted; --resume goes on from the last checkpoint in {args.out}",
                  file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
