"""The training command's defaults (optimiser, schedule, regularisation), and where each comes from.

Two recipes, picked by the model's name (every value can be overridden on the command line):

* ``repmlpnet`` (``repmlpnet_*``): the authors' RepMLPNet script
  (https://github.com/DingXiaoH/RepMLP/blob/3eff13fa0257af28663880d870f327d665f0a8e2/config.py and the
  README's "Train from scratch" command, itself Swin Transformer's script):
  AdamW (betas 0.9/0.999, eps 1e-8), ``TRAIN.BASE_LR 0.001`` scaled linearly by the global batch / 512
  as Swin's ``main.py`` does, ``TRAIN.WEIGHT_DECAY 0.1``, 100 epochs, 10 warm-up epochs from
  ``TRAIN.WARMUP_LR 5e-7``, cosine to ``TRAIN.MIN_LR 0``, ``MODEL.LABEL_SMOOTHING 0.1``,
  ``TRAIN.CLIP_GRAD 5.0``; per-GPU batch 32 on 8 GPUs (global 256). Not reproduced here: its
  RandAugment preset ``raug15``, mixup 0.4 and cutmix 1.0 (named deviations: this command's training
  augmentation is the random resized crop + flip only).
* ``sgd`` (everything else): SGD with momentum 0.9 (Nesterov), a cosine schedule, ``lr = 0.05 x B / 64``
  and weight decay 5e-4: the book's :func:`repmlp_lite.train.train` (chapter 5), which trains the small
  nets on the digits to high accuracy in a few epochs; no warm-up, no label smoothing. The RepMLP paper
  publishes no training script, only its settings in prose: for the CIFAR pure MLP (Sec. 4.1) batch 128,
  100 epochs, cosine learning rate from 0.2 to 0; for the ImageNet ResNets (Sec. 4.2) global batch 256,
  100 epochs, cosine from 0.1 to 0, weight decay 1e-4, momentum 0.9, with mixup and AutoAugment (not
  reproduced here). Pass ``--lr``, ``--weight-decay`` and ``--epochs`` to follow them.

Both exclude from weight decay every 1-D parameter (BN weights and biases, all biases), as Swin's
``optimizer.py`` (``set_weight_decay``) does in the authors' script.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Recipe:
    """Defaults of one recipe; ``lr`` is for a global batch of ``lr_batch`` and scales linearly."""

    name: str
    optimizer: str
    lr: float
    lr_batch: int
    weight_decay: float
    epochs: int
    batch_size: int
    warmup_epochs: float
    warmup_lr: float
    label_smoothing: float
    clip_grad: float  # 0: no clipping


RECIPES = {
    "repmlpnet": Recipe("repmlpnet", "adamw", 1e-3, 512, 0.1, 100, 256, 10, 5e-7, 0.1, 5.0),
    "sgd": Recipe("sgd", "sgd", 0.05, 64, 5e-4, 10, 64, 0, 0.0, 0.0, 0.0),
}


def recipe_for(model_name: str) -> Recipe:
    """The authors' RepMLPNet recipe for ``repmlpnet_*``, the book's SGD recipe for every other name."""
    return RECIPES["repmlpnet" if model_name.startswith("repmlpnet_") else "sgd"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight decay on parameters of 2 or more dimensions, none on 1-D ones (norms, biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``"sgd"`` (momentum 0.9, Nesterov) or ``"adamw"`` (betas 0.9/0.999, eps 1e-8) on :func:`param_groups`."""
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, warmup_lr: float, base_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear from ``warmup_lr`` to ``base_lr`` over ``warmup_steps``, then cosine to 0
    at ``total_steps`` (Swin's ``CosineLRScheduler`` with ``t_in_epochs=False``, min lr 0)."""
    start = warmup_lr / base_lr if base_lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start + (1 - start) * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
