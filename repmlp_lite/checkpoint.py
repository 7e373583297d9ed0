"""Checkpoints that survive a SIGKILL: written atomically, with every random state a resumed run needs,
and the one before kept.

:func:`save_atomic` writes to a temporary file in the same directory, flushes and fsyncs it, then
``os.replace``-s it over the target (atomic on POSIX) and fsyncs the directory: a kill at any moment
leaves either the old checkpoint or the new one, never half of one. With ``keep_previous`` the old one
is first renamed to ``previous.pt`` (:func:`previous_checkpoint`), a history of two as timm's
``CheckpointSaver`` keeps one: if ``last.pt`` is ever lost or damaged (a disk, a copy cut short), a run
can go on from the one before. :func:`load_checkpoint` says which file is wrong, and how, in one line.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

# what every checkpoint of the training command holds (training_run.save_checkpoint)
CHECKPOINT_KEYS = (
    "model_name", "model_kwargs", "args", "model", "optimizer", "scheduler", "scaler", "epoch", "step", "loss_sum",
    "rng",
)


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model: the message is one line."""


def previous_checkpoint(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``DIR/previous.pt`` for ``DIR/last.pt``."""
    return path.with_name("previous" + path.suffix)


def save_atomic(obj: Any, path: Path, keep_previous: bool = False) -> None:
    """``torch.save(obj)`` to ``path`` through a fsynced temporary file and ``os.replace``; with
    ``keep_previous``, the file at ``path`` (if any) becomes :func:`previous_checkpoint` just before.

    ``CheckpointError`` naming ``path`` when the disk refuses (full, read-only); the old file stays then."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_checkpoint(path))
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"cannot write the checkpoint {path} ({err.strerror or err})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def rng_states() -> dict[str, Any]:
    """Python's, NumPy's, torch's CPU and (where there is one) every CUDA device's generator state."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _go_on_from_previous(path: Path) -> str:
    """A hint for a bad or missing ``path``: the checkpoint before it, when there is a whole one."""
    previous = previous_checkpoint(path)
    if previous != path and previous.is_file() and zipfile.is_zipfile(previous):  # torch.save writes a zip
        return f"; the one before it is {previous}: go on from there with --resume {previous}"
    return ""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint of the training command (a dict with :data:`CHECKPOINT_KEYS`), read on the CPU.

    ``CheckpointError`` naming ``path`` and what is wrong: missing, not a file, cut short or not written
    by ``torch.save``, or a ``torch.save`` of something else (a bare state dict, ``deployed.pt``); the
    line points to :func:`previous_checkpoint` when that one is whole."""
    if not path.exists():
        hint = _go_on_from_previous(path)
        raise CheckpointError(f"--resume: no checkpoint {path} (run once without --resume first){hint}")
    if not path.is_file():
        raise CheckpointError(f"--resume: {path} is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]  # torch's first sentence
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # torch.save's zip archive, at least where it starts
        what = "cut short or damaged" if zipped else "not a file torch.save wrote"
        raise CheckpointError(
            f"--resume: {path} is not a readable checkpoint ({what}: {first}){_go_on_from_previous(path)}"
        ) from None
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt] if isinstance(ckpt, dict) else list(CHECKPOINT_KEYS)
    if missing:
        raise CheckpointError(
            f"--resume: {path} is not a checkpoint of this command (no {missing[0]!r} key in the "
            f"{type(ckpt).__name__} it holds){_go_on_from_previous(path)}"
        )
    return ckpt


def check_fits(state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise ``CheckpointError`` naming the first key that is missing, unexpected or of another shape."""
    for key in [*model_state, *(k for k in state if k not in model_state)]:  # the model's order first
        if key not in state:
            raise CheckpointError(f"{what} does not fit the model: key {key!r} is missing from it")
        if key not in model_state:
            raise CheckpointError(f"{what} does not fit the model: unexpected key {key!r}")
        if tuple(state[key].shape) != tuple(model_state[key].shape):
            raise CheckpointError(
                f"{what} does not fit the model: key {key!r} has shape {tuple(state[key].shape)}"
                f", the model {tuple(model_state[key].shape)}"
            )
