"""Checkpoints that survive a SIGKILL: written atomically, with every random state a resumed run needs.

:func:`save_atomic` writes to a temporary file in the same directory, flushes and fsyncs it, then
``os.replace``-s it over the target (atomic on POSIX) and fsyncs the directory: a kill at any moment
leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing or does not fit the model: the message is one line."""


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` through a fsynced temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The dict :func:`save_atomic` wrote; ``CheckpointError`` when there is none."""
    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint {path} (run once without --resume first)")
    return torch.load(path, map_location="cpu", weights_only=False)


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
