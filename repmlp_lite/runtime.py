"""Setting up one process of the training command: its rank and device under torchrun, its seeds,
deterministic kernels (``--deterministic``), its shard of the data (:class:`ResumableSampler`), sums over
processes, and the model built by name for the data's images (:func:`build_model`, from the builder's
signature). The command's two errors: :class:`UsageError` (bad input) and :class:`TrainingError` (a run
that went wrong).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from .zoo import create_model, list_models, model_keywords


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit status 2 (argparse's)."""


class TrainingError(RuntimeError):
    """A run that cannot go on (a loss or weights that are not finite): printed as one line, exit status 1."""


def seed_everything(seed: int = 0) -> None:
    """Fix Python's, NumPy's and torch's random seeds."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Runtime:
    """Where this process runs: its rank among ``world`` processes, and its device."""

    rank: int
    world: int
    device: torch.device


def _uses_cuda(device: str) -> bool:
    """Whether ``--device`` (``auto``, ``cpu`` or ``cuda``) puts the run on GPUs."""
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def setup_runtime(device: str) -> Runtime:
    """Rank and world size from torchrun's environment (1 process without it); one device per process:
    on GPUs, local rank r on ``cuda:r``, so torchrun may start at most as many processes per machine as
    there are visible GPUs."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no GPU is visible")
    use_cuda = _uses_cuda(device)
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    gpus = torch.cuda.device_count() if use_cuda else 0
    if use_cuda and per_machine > gpus:
        raise UsageError(
            f"torchrun --nproc_per_node {per_machine}: {gpus} GPU{'s are' if gpus != 1 else ' is'} visible "
            f"here, one per process: start at most {gpus}, or train on the CPU with --device cpu"
        )
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    return Runtime(rank, world, dev)


# cuBLAS's setting for repeatable results; read once, when CUDA first uses cuBLAS in the process
CUBLAS_DETERMINISTIC = ":4096:8"


@contextlib.contextmanager
def deterministic_kernels(enabled: bool, device: str) -> Iterator[None]:
    """``--deterministic``: run the body with ``torch.use_deterministic_algorithms(True)``, cuDNN's
    benchmark off and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, then restore all three (``enabled=False``:
    change nothing). DataLoader workers are seeded by the loader's own generator, augmentations by
    (seed, epoch, index), with or without it.

    cuBLAS reads its setting when CUDA first uses it, so on a GPU (``device`` ``"cuda"``, or ``"auto"``
    with one visible) a process that has initialised CUDA already must have had it in its environment.
    """
    if not enabled:
        yield
        return
    previous_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if previous_env not in (CUBLAS_DETERMINISTIC, ":16:8"):
        if _uses_cuda(device) and torch.cuda.is_initialized():
            raise UsageError(
                "--deterministic: CUDA was initialised in this process before CUBLAS_WORKSPACE_CONFIG could be "
                f"set; start Python with CUBLAS_WORKSPACE_CONFIG={CUBLAS_DETERMINISTIC} in the environment"
            )
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = benchmark
        if previous_env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = previous_env


def determinism(rt: Runtime) -> dict[str, Any]:
    """Whether this run's kernels repeat bit for bit, and why: the start of the command's log."""
    if torch.are_deterministic_algorithms_enabled():
        why = "--deterministic: torch.use_deterministic_algorithms(True), cuDNN benchmark off, " + (
            f"CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG')}"
        )
        return {"deterministic": True, "determinism": why}
    if rt.device.type == "cpu":
        why = (
            "on a CPU the training ops of this package give the same bits for the same seed and thread "
            "count; --deterministic also makes torch refuse any op that would not"
        )
        return {"deterministic": True, "determinism": why}
    why = (
        "GPU kernels (cuDNN's choice of algorithm, atomic adds in backward passes) may differ from run to run "
        "and after --resume; --deterministic makes them repeat"
    )
    return {"deterministic": False, "determinism": why}


def init_distributed(rt: Runtime, batch_size: int) -> None:
    """Check that the global ``batch_size`` shards evenly, then join the process group (nccl on GPUs, gloo on
    CPUs) when there is more than one process."""
    if batch_size < rt.world:
        raise UsageError(
            f"--batch-size {batch_size} is smaller than the {rt.world} processes: each needs an image"
        )
    if batch_size % rt.world:
        raise UsageError(
            f"--batch-size {batch_size} is not divisible by the {rt.world} processes "
            "(it is the global batch: each process takes B/N)"
        )
    if rt.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if rt.device.type == "cuda" else "gloo")


def _sizes_hint(name: str, kwargs: dict[str, Any], num_classes: int, takes_size: bool) -> str:
    """The image sizes (4 to 64) the model can take, by building and probing it; else its name's size."""
    if not takes_size:
        fixed = re.search(r"(\d+)$", name)
        return (
            f"; it is built for {fixed.group(1)}x{fixed.group(1)} images"
            if fixed
            else ("; it is built for 32x32 images" if "cifar" in name else "")
        )
    good = []
    for size in range(4, 65, 4):
        try:
            model = create_model(name, num_classes=num_classes, **{**kwargs, "image_size": size}).eval()
            with torch.no_grad():
                model(torch.zeros(1, kwargs.get("in_channels", 3), size, size))
            good.append(size)
        except (RuntimeError, ValueError):
            continue
    return f"; sizes it takes (4 to 64): {', '.join(map(str, good))}" if good else ""


def build_model(
    name: str, num_classes: int, in_channels: int, image_size: int, extra: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """``create_model(name, num_classes, **kwargs)`` with ``kwargs`` = ``extra`` plus ``in_channels`` and
    ``image_size`` where the builder's signature names them (:func:`~repmlp_lite.zoo.model_keywords`);
    probed on a ``(2, C, S, S)`` batch. Returns the model and its kwargs. ``UsageError`` for a keyword the
    builder does not take, or images the model cannot take (with the sizes it can)."""
    if name not in list_models():
        raise UsageError(f"--model: unknown name {name!r}; one of {', '.join(list_models())}")
    if "num_classes" in extra:
        raise UsageError("--model-kwargs: give the number of classes with --num-classes")
    keywords = model_keywords(name)
    unknown = [key for key in extra if key not in keywords]
    if unknown:
        takes = f"it takes {', '.join(keywords[1:])}" if len(keywords) > 1 else "it takes none (--num-classes aside)"
        raise UsageError(f"--model-kwargs: {name} takes no {unknown[0]!r}; {takes}")
    data = {"in_channels": in_channels, "image_size": image_size}
    kwargs = {**{key: value for key, value in data.items() if key in keywords}, **extra}
    try:
        model = create_model(name, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise UsageError(f"--model {name}: {err}") from None
    except ValueError as err:
        hint = _sizes_hint(name, kwargs, num_classes, "image_size" in kwargs)
        raise UsageError(f"--model {name} with --image-size {image_size}: {err}{hint}") from None
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, in_channels, image_size, image_size))
    except (RuntimeError, ValueError) as err:
        hint = _sizes_hint(name, kwargs, num_classes, "image_size" in kwargs)
        first = str(err).strip().splitlines()[0]
        raise UsageError(
            f"--model {name} cannot take {in_channels}x{image_size}x{image_size} images ({first}){hint}"
        ) from None
    return model.train(), kwargs


class ResumableSampler(DistributedSampler):
    """torch's ``DistributedSampler`` (the permutation from ``seed + epoch``, this rank's shard) that can
    skip the first ``start`` indices of its shard: a resumed run continues mid-epoch where it stopped."""

    start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def reduce_values(values: list[float], rt: Runtime, op: Any = None) -> list[float]:
    """Sum (or ``op``) ``values`` over the processes."""
    if rt.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def autocast(amp: str, device: torch.device) -> Any:
    """``torch.autocast`` to bfloat16 or float16 on ``device``'s type; ``"off"``: nothing."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
