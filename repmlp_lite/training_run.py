"""One run of the training command, in the order its steps happen (``python -m repmlp_lite.train``,
whose :func:`~repmlp_lite.train.run` calls them):

1. :func:`set_up`: the process (rank, device), the data, the options filled from the recipe and checked,
   the model built for the data's images, its optimiser, schedule and gradient scaler: a :class:`TrainingRun`.
2. :func:`resume` (``--resume``): the state of a checkpoint written by :func:`save_checkpoint`.
3. :func:`start_log`: the run directory, a fresh log unless the run goes on.
4. Every epoch: :func:`train_one_epoch` (which stops at a step whose loss is not finite), then
   :func:`validate` (the training form's top-1), :func:`save_checkpoint` and :func:`log_record`.
5. The end (merge, check, ``deployed.pt``): :func:`repmlp_lite.finish.finish`.

Bad input raises :class:`~repmlp_lite.runtime.UsageError`, :class:`~repmlp_lite.data.DataError` or
:class:`~repmlp_lite.checkpoint.CheckpointError`, a run that goes wrong
:class:`~repmlp_lite.runtime.TrainingError`: each one line, printed by the command without a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .checkpoint import (
    CheckpointError,
    check_fits,
    load_checkpoint,
    previous_checkpoint,
    rng_states,
    save_atomic,
    set_rng_states,
)
from .data import Augmented, DataError, Splits, build_splits, download_cifar
from .fast_training import for_speed
from .recipe import Recipe, make_optimizer, recipe_for, warmup_cosine
from .runtime import (
    ResumableSampler,
    Runtime,
    TrainingError,
    UsageError,
    autocast,
    build_model,
    determinism,
    init_distributed,
    reduce_values,
    seed_everything,
    setup_runtime,
)

# options a resumed run must share with the checkpoint: they decide which images each step sees
RESUME_MUST_MATCH = ("batch_size", "limit_train", "seed")


@dataclass
class TrainingRun:
    """Everything one run holds: its options, process, data, model (``net``: wrapped for DDP / SyncBN), the
    optimiser's state, and where it is (``epoch``, ``step`` within it, ``loss_sum`` of the epoch so far)."""

    args: argparse.Namespace
    rt: Runtime
    splits: Splits
    model: nn.Module
    net: nn.Module
    setup: dict[str, Any]  # what finish() and deployed.pt need to rebuild the model
    train_set: Dataset
    sampler: ResumableSampler
    val_loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    steps_per_epoch: int
    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    saved_at: int | None = None  # the steps done when last.pt was written for this run (None: not yet)
    last_is_ours: bool = False  # last.pt is this run's (written or resumed from): keep it as previous.pt

    @property
    def last(self) -> Path:
        return self.args.out / "last.pt"

    @property
    def local_batch(self) -> int:
        return self.args.batch_size // self.rt.world

    @property
    def steps_done(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step

    def where(self) -> str:
        """``"step 57 of 80 (epoch 3)"``: how far the run is."""
        done = self.steps_done
        epoch = (done - 1) // self.steps_per_epoch + 1 if done else 1
        return f"step {done} of {self.args.epochs * self.steps_per_epoch} (epoch {epoch})"

    def last_checkpoint(self) -> str:
        """What a stopped run leaves to go on from, in words."""
        if self.saved_at is None:
            return "no checkpoint was written"
        return f"the last checkpoint, {self.last}, holds the run after step {self.saved_at}"


# ---- 1. set-up ------------------------------------------------------------------------------------------


def _check_number(option: str, value: float, low: float, low_ok: bool, high: float = math.inf) -> None:
    """``UsageError`` unless ``value`` is a finite number in ``(low, high)`` (``[low, high)`` with ``low_ok``)."""
    if not (math.isfinite(value) and (value >= low if low_ok else value > low) and value < high):
        bound = f"{'at least' if low_ok else 'above'} {low:g}" + (f" and below {high:g}" if high < math.inf else "")
        raise UsageError(f"--{option} must be a finite number {bound}, got {value}")


def fill_and_check_options(args: argparse.Namespace, recipe: Recipe, splits: Splits) -> argparse.Namespace:
    """``args`` with every ``None`` default filled from ``recipe`` and the data; checks every number."""
    for key in ("epochs", "batch_size", "optimizer", "weight_decay", "warmup_epochs", "label_smoothing", "clip_grad"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(recipe, key))
    if args.lr is None:
        args.lr = recipe.lr * args.batch_size / recipe.lr_batch
    if args.workers is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        args.workers = 0 if splits.kind == "digits" else min(8, max(1, (os.cpu_count() or 1) // local_processes))
    args.num_classes = args.num_classes or splits.num_classes
    for key in ("epochs", "batch_size", "num_classes"):
        if getattr(args, key) < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)}")
    if args.limit_train is not None and args.limit_train < 1:
        raise UsageError(f"--limit-train must be a positive integer, got {args.limit_train}")
    for key in ("save_every", "workers"):
        if getattr(args, key) < 0:
            raise UsageError(f"--{key.replace('_', '-')} must be 0 or more, got {getattr(args, key)}")
    _check_number("lr", args.lr, 0, low_ok=False)
    _check_number("weight-decay", args.weight_decay, 0, low_ok=True)
    _check_number("warmup-epochs", args.warmup_epochs, 0, low_ok=True)
    _check_number("label-smoothing", args.label_smoothing, 0, low_ok=True, high=1)
    _check_number("clip-grad", args.clip_grad, 0, low_ok=True)
    if args.num_classes < splits.num_classes:
        raise UsageError(f"--num-classes {args.num_classes}: the data has {splits.num_classes} classes")
    return args


def _check_out(out: Path) -> None:
    """``UsageError`` unless ``out`` is (or can be made) a writable directory."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a directory for the run (log.jsonl, last.pt, deployed.pt)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out}: cannot make the run directory ({err.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: the run directory is not writable")


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


def set_up(args: argparse.Namespace) -> TrainingRun:
    """Check the options, read the data, build the model and its optimiser: a run at epoch 0, step 0."""
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
    if args.image_size is not None and args.image_size < 1:
        raise UsageError(f"--image-size must be a positive integer, got {args.image_size}")
    _check_out(args.out)
    if args.download:
        if args.data == "digits":
            raise UsageError(f"--download {args.download}: give --data the directory to put it in, not 'digits'")
        try:
            download_cifar(args.download, Path(args.data))
        except DataError as err:
            raise DataError(f"--download {args.download}: {err}") from None
    image_size = args.image_size or (224 if args.data != "digits" and (Path(args.data) / "train").is_dir() else 32)
    splits = build_splits(args.data, image_size, args.seed)
    recipe = recipe_for(args.model)
    args = fill_and_check_options(args, recipe, splits)
    init_distributed(rt, args.batch_size)
    seed_everything(args.seed)
    model, kwargs = build_model(args.model, args.num_classes, splits.in_channels, image_size, extra)
    train_set = splits.train
    if args.limit_train:
        keep = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))[: args.limit_train]
        train_set = Subset(train_set, keep.sort().values.tolist())
    local_batch = args.batch_size // rt.world
    sampler = ResumableSampler(train_set, rt.world, rt.rank, shuffle=True, seed=args.seed, drop_last=True)
    steps_per_epoch = len(sampler) // local_batch
    if steps_per_epoch == 0:
        raise UsageError(f"--batch-size {args.batch_size} is larger than the training set ({len(train_set)} images)")
    val_loader = _loader(Subset(splits.val, range(rt.rank, len(splits.val), rt.world)), local_batch, args.workers, rt)

    model.to(rt.device)
    optimizer = make_optimizer(model, args.optimizer, args.lr, args.weight_decay)
    total, warmup = args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)
    scheduler = warmup_cosine(optimizer, total, warmup, recipe.warmup_lr, args.lr)
    net: nn.Module = for_speed(model, channels_last=args.channels_last)  # before the DDP wrap, as DDP asks
    if args.sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if rt.world > 1:
        net = DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    net = for_speed(net, compile_mode=args.compile)  # after it, so that DDP's buckets split the graph
    setup = {
        "model_name": args.model,
        "model_kwargs": kwargs,
        "num_classes": args.num_classes,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    return TrainingRun(
        args, rt, splits, model, net, setup, train_set, sampler, val_loader, optimizer, scheduler,
        torch.amp.GradScaler("cuda", enabled=args.amp == "fp16"),
        nn.CrossEntropyLoss(label_smoothing=args.label_smoothing), steps_per_epoch,
    )


# ---- 2. resume -----------------------------------------------------------------------------------------


def resume(run: TrainingRun, path: Path) -> None:
    """Go on from the checkpoint ``path`` (``DIR/last.pt``, or the one before it, ``DIR/previous.pt``): the
    model, optimiser, schedule, scaler, position and random states. ``CheckpointError`` naming the file when
    it is not one of this command's checkpoints, is of another model or shapes, or was written with other
    data settings (:data:`RESUME_MUST_MATCH`, the number of processes)."""
    ckpt = load_checkpoint(path)
    args = run.args
    if ckpt["model_name"] != args.model:
        raise CheckpointError(f"--resume: {path} is of model {ckpt['model_name']!r}, not {args.model!r}")
    check_fits(ckpt["model"], run.model.state_dict(), f"--resume: {path}")
    for key in RESUME_MUST_MATCH:
        then, now = ckpt["args"].get(key), getattr(args, key)
        if then != now:
            option = f"--{key.replace('_', '-')}"
            written = f"without {option}" if then is None else f"with {option} {then}"
            this = f"no {option}" if now is None else f"{option} {now}"
            fix = f"leave {option} out" if then is None else f"give {option} {then}"
            raise CheckpointError(f"--resume: {path} was written {written}, this run has {this}: {fix} to go on")
    if ckpt.get("world", 1) != run.rt.world:
        raise CheckpointError(
            f"--resume: {path} was written by {ckpt.get('world', 1)} processes, this run has {run.rt.world}: "
            "go on with as many (each process resumes its own shard of the data)"
        )
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.epoch, run.step, run.loss_sum = ckpt["epoch"], ckpt["step"], ckpt["loss_sum"]
    set_rng_states(ckpt["rng"])
    run.saved_at = run.steps_done
    run.last_is_ours = path.resolve() == run.last.resolve()


# ---- 3. the log ----------------------------------------------------------------------------------------


def start_log(run: TrainingRun) -> None:
    """A fresh run (not resumed) starts a fresh log and drops the history of an earlier run in ``DIR``; the
    log's first line says how the run started, where, and whether it is deterministic
    (:func:`~repmlp_lite.runtime.determinism`)."""
    if not run.args.resume and run.rt.rank == 0:
        (run.args.out / "log.jsonl").unlink(missing_ok=True)
        previous_checkpoint(run.last).unlink(missing_ok=True)
    start = {"run": "resumed" if run.args.resume else "started", "device": str(run.rt.device), "processes": run.rt.world}
    log_record(run.args.out, {**start, **determinism(run.rt)}, run.rt)


def log_record(out: Path, record: dict[str, Any], rt: Runtime) -> None:
    """Print ``record`` as one JSON line and append it to ``out/log.jsonl`` (rank 0 only)."""
    if rt.rank == 0:
        line = json.dumps(record)
        print(line, flush=True)
        with open(out / "log.jsonl", "a") as f:
            f.write(line + "\n")


# ---- 4. every epoch ------------------------------------------------------------------------------------


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _stop_if_not_finite(run: TrainingRun, loss: float) -> None:
    """``TrainingError`` (on every process at once) when this step's loss is not finite."""
    finite = math.isfinite(loss)
    if run.rt.world > 1:  # every process stops at the same step, or the others wait forever
        finite = reduce_values([float(finite)], run.rt, dist.ReduceOp.MIN)[0] == 1.0
    if not finite:
        run.step += 1  # this step ran
        raise TrainingError(
            f"the training loss is not finite ({loss}) at {run.where()} with --lr {run.args.lr:g}: "
            f"training stopped there; {run.last_checkpoint()}"
        )


def train_one_epoch(run: TrainingRun, bar: tqdm) -> dict[str, Any]:
    """Train from ``run.step`` to the end of epoch ``run.epoch`` (checkpointing every ``--save-every`` steps);
    returns the epoch's record: mean training loss, the last learning rate, images per second."""
    args, rt = run.args, run.rt
    run.sampler.set_epoch(run.epoch, run.step * run.local_batch)
    if isinstance(run.splits.train, Augmented):
        run.splits.train.set_epoch(run.epoch)
    loader = _loader(run.train_set, run.local_batch, args.workers, rt, run.sampler, args.seed + run.epoch)
    _set_train_mode(run.net, args.freeze_bn)
    start, first_step = time.perf_counter(), run.step
    for x, y in loader:
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        with autocast(args.amp, rt.device):
            loss = run.loss_fn(run.net(x), y)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if args.clip_grad:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.net.parameters(), args.clip_grad)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        loss_value = loss.item()
        _stop_if_not_finite(run, loss_value)
        run.loss_sum += loss_value
        run.step += 1
        bar.update()
        if args.save_every and (run.epoch * run.steps_per_epoch + run.step) % args.save_every == 0:
            save_checkpoint(run)
        if args.kill_after_steps and run.epoch * run.steps_per_epoch + run.step == args.kill_after_steps:
            os.kill(os.getpid(), signal.SIGKILL)  # the tests' stand-in for a crash
    seconds = time.perf_counter() - start
    return {
        "epoch": run.epoch + 1,
        "train_loss": reduce_values([run.loss_sum / run.step], rt)[0] / rt.world,
        "lr": run.optimizer.param_groups[0]["lr"],
        "images_per_s": (run.step - first_step) * args.batch_size / seconds,
    }


@torch.no_grad()
def validate(
    model: nn.Module, loader: DataLoader, rt: Runtime, amp: str = "off", deployed: nn.Module | None = None
) -> dict[str, float]:
    """Top-1 of ``model`` (eval mode) over the validation set (this rank's shard, summed over ranks): after
    every epoch. With ``deployed`` (at the end, :func:`repmlp_lite.finish.finish`), also its top-1, the
    fraction of images where both predict the same class, and max |logit diff| / max |logit|."""
    model.eval()
    correct = agree = correct_dep = total = max_diff = max_logit = 0.0
    for x, y in loader:
        x, y = x.to(rt.device), y.to(rt.device)
        with autocast(amp, rt.device):
            logits = model(x).float()
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
        if deployed is not None:
            merged = deployed(x)
            agree += (merged.argmax(1) == logits.argmax(1)).sum().item()
            correct_dep += (merged.argmax(1) == y).sum().item()
            max_diff = max(max_diff, (merged - logits).abs().max().item())
            max_logit = max(max_logit, logits.abs().max().item())
    correct, agree, correct_dep, total = reduce_values([correct, agree, correct_dep, total], rt)
    max_diff, max_logit = reduce_values([max_diff, max_logit], rt, dist.ReduceOp.MAX)
    out = {"top1": correct / total}
    if deployed is not None:
        rel = max_diff / max_logit if max_logit > 0 else (0.0 if max_diff == 0 else math.inf)
        out.update(top1_deployed=correct_dep / total, agreement=agree / total, max_rel_logit_diff=rel)
    return out


def save_checkpoint(run: TrainingRun) -> None:
    """Write ``DIR/last.pt`` (rank 0), keeping the one before as ``DIR/previous.pt`` when it is this run's.

    ``TrainingError`` instead of a checkpoint whose weights are not finite: ``last.pt`` and ``previous.pt``
    always hold weights a run can go on from."""
    state = run.model.state_dict()
    floats = [t for t in state.values() if t.is_floating_point()]
    if floats and not torch.stack([t.isfinite().all() for t in floats]).all().item():
        raise TrainingError(
            f"the weights are not finite after {run.where()} with --lr {run.args.lr:g}: training stopped "
            f"before writing them; {run.last_checkpoint()}"
        )
    if run.rt.rank == 0:
        save_atomic(
            {
                **run.setup,
                "world": run.rt.world,
                "model": state,
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict(),
                "epoch": run.epoch,
                "step": run.step,
                "loss_sum": run.loss_sum,
                "rng": rng_states(),
            },
            run.last,
            keep_previous=run.last_is_ours,
        )
    run.saved_at, run.last_is_ours = run.steps_done, True
