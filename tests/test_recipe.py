"""recipe: which defaults a model gets, weight decay kept off 1-D parameters, the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from repmlp_lite.recipe import make_optimizer, param_groups, recipe_for, warmup_cosine


def test_repmlpnets_get_the_authors_recipe_and_the_rest_the_books():
    authors = recipe_for("repmlpnet_t224")
    assert (authors.optimizer, authors.lr, authors.lr_batch, authors.weight_decay) == (
        "adamw",
        1e-3,
        512,
        0.1,
    )
    assert (authors.warmup_epochs, authors.label_smoothing, authors.clip_grad) == (10, 0.1, 5.0)
    book = recipe_for("small_repmlp_resnet")
    assert (book.optimizer, book.lr, book.lr_batch, book.weight_decay) == ("sgd", 0.05, 64, 5e-4)
    assert recipe_for("repmlp_pure_mlp_cifar") == book


def test_weight_decay_skips_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [(4, 3, 3, 3), (2, 36)]
    assert len(no_decay["params"]) == 4  # conv bias, BN weight and bias, linear bias
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adamw', got 'lamb'"):
        make_optimizer(model, "lamb", 0.1, 0.0)


def test_warmup_then_cosine():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.4)
    scheduler = warmup_cosine(optimizer, total_steps=10, warmup_steps=4, warmup_lr=0.0, base_lr=0.4)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:5] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert lrs[7] == pytest.approx(0.2 * (1 + math.cos(math.pi * 3 / 6)))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
