"""The end of a training run, and its log: the validation accuracy, the merge checked on the whole
validation set, ``deployed.pt``, and one JSON line per record in ``log.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import save_atomic
from .precision import current_precision, full_float32
from .reparameterize import deploy
from .runtime import Runtime, autocast, reduce_values
from .zoo import create_model


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, rt: Runtime, amp: str = "off", deployed: nn.Module | None = None
) -> dict[str, float]:
    """Top-1 of ``model`` (eval mode) over this rank's shard, summed over ranks; with ``deployed``, also its
    top-1, the fraction of images where both predict the same class, and max |logit diff| / max |logit|."""
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
        out.update(
            top1_deployed=correct_dep / total,
            agreement=agree / total,
            max_rel_logit_diff=max_diff / max_logit,
        )
    return out


def log_record(out: Path, record: dict[str, Any], rt: Runtime) -> None:
    """Print ``record`` as one JSON line and append it to ``out/log.jsonl`` (rank 0 only)."""
    if rt.rank == 0:
        line = json.dumps(record)
        print(line, flush=True)
        with open(out / "log.jsonl", "a") as f:
            f.write(line + "\n")


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
        check = evaluate(plain, val_loader, rt, deployed=deployed)
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
