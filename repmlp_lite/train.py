"""A plain training loop with a progress bar, seeds fixed, on ``cuda`` when there is one."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


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
        train_set, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )
    if len(loader) == 0:
        raise ValueError(f"batch_size={batch_size} is larger than the training set ({len(train_set)} examples)")
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
