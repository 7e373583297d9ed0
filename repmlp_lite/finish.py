"""The end of a training run: the model merged, the merge checked on the whole validation set, and
``deployed.pt`` written, with the run's last JSON line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import save_atomic
from .precision import current_precision, full_float32
from .reparameterize import deploy
from .runtime import Runtime
from .training_run import log_record, validate
from .zoo import create_model


def finish(
    model: nn.Module, setup: dict[str, Any], val_loader: DataLoader, rt: Runtime, out: Path
) -> dict[str, Any]:
    """Deploy the trained model, compare it with the training form on the whole validation set (float32,
    TF32 off: ``check_precision`` in the record), write ``out/deployed.pt`` (it loads strictly into
    ``create_model(name, deploy=True, num_classes=K, **model_kwargs)``) and log the last JSON line."""
    plain = create_model(setup["model_name"], num_classes=setup["num_classes"], **setup["model_kwargs"])
    plain.load_state_dict(model.state_dict())  # a SyncBatchNorm-free copy of the trained weights
    plain.to(rt.device)
    with full_float32():
        deployed = deploy(plain)
        check = validate(plain, val_loader, rt, deployed=deployed)
        check["check_precision"] = current_precision(rt.device, torch.float32)._asdict()
    state = {k: v.cpu() for k, v in deployed.state_dict().items()}
    create_model(
        setup["model_name"], deploy=True, num_classes=setup["num_classes"], **setup["model_kwargs"]
    ).load_state_dict(state, strict=True)
    if rt.rank == 0:
        save_atomic(state, out / "deployed.pt")
    record = {
        "final": True,
        **check,
        "model": setup["model_name"],
        "num_classes": setup["num_classes"],
        "model_kwargs": setup["model_kwargs"],
    }
    log_record(out, record, rt)
    return record
