"""Shared helpers for the package's unit tests.

* :func:`train_steps`: a few real SGD steps on random data, so BN running statistics (and the
  weights) are no longer their defaults before a merge is checked.
* :func:`randomize_bn`: non-trivial random eval-mode statistics and affine parameters for one BN.
* :func:`max_rel`: ``max |a - b| / max |b|``, the relative error used for float32 checks.

They are exposed as fixtures returning the function, so test files need no import from conftest.

The book's fixtures (:mod:`book_fixtures`: ``built_book``, ``chromium``, ``server``) are registered
here, once for every module, so that a session has one build, one browser and one server.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from book_fixtures import built_book, chromium, server  # noqa: F401  (registered as fixtures here)
from torch import nn


def _train_steps(
    model: nn.Module,
    input_shape: tuple[int, ...],
    steps: int = 4,
    lr: float = 0.02,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Train ``model`` in place for ``steps`` SGD steps (MSE to a random target; cross-entropy for logits).

    Returns ``model`` in train mode. Its BN running statistics have moved away from (0, 1).
    """
    gen = torch.Generator().manual_seed(seed)
    model.to(dtype).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        x = torch.randn(input_shape, generator=gen, dtype=dtype) * 1.5 + 0.3
        out = model(x)
        if out.dim() == 2:  # logits
            target = torch.randint(0, out.shape[1], (out.shape[0],), generator=gen)
            loss = F.cross_entropy(out, target)
        else:
            loss = F.mse_loss(out, torch.randn(out.shape, generator=gen, dtype=dtype))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def _randomize_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int = 0) -> nn.modules.batchnorm._BatchNorm:
    """Random running mean, positive running var, weight and bias (never the identity BN); eval mode."""
    gen = torch.Generator().manual_seed(seed)
    n = bn.num_features
    dtype = bn.running_mean.dtype
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=gen, dtype=dtype))
        bn.running_var.copy_(torch.rand(n, generator=gen, dtype=dtype) * 2 + 0.2)
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(n, generator=gen, dtype=dtype))
            bn.bias.copy_(torch.randn(n, generator=gen, dtype=dtype))
    return bn.eval()


def _max_rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="session")
def train_steps():
    return _train_steps


@pytest.fixture(scope="session")
def randomize_bn():
    return _randomize_bn


@pytest.fixture(scope="session")
def max_rel():
    return _max_rel


@pytest.fixture(scope="module")
def single_thread():
    """Run a test module's tiny tensors on one intra-op thread, then restore the previous count.

    On a loaded 2-core machine the default thread pool spends far longer synchronising than computing
    on these small shapes (a 100x slowdown was measured); results do not depend on it.
    Test modules opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
