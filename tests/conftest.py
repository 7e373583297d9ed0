"""Shared helpers for the package's unit tests.

* :func:`train_steps`: a few real SGD steps on random data, so BN running statistics (and the
  weights) are no longer their defaults before a merge is checked.
* :func:`randomize_bn`: the package's :func:`repmlp_lite.measure.randomize_bn` (non-trivial statistics and
  affine parameters for every BN of a module, one generator), then eval mode.
* :func:`max_rel`: ``max |a - b| / max |b|``, the relative error used for float32 checks.
* :func:`assert_equivalent`: the float64 equivalence check, ``max |a - b| < tol`` (default 1e-10), same shape.
* ``cifar_dir``: a directory in CIFAR-10's published Python format, with a few random images.

They are exposed as fixtures returning the function, so test files need no import from conftest.

The book's fixtures (:mod:`book_fixtures`: ``built_book``, ``chromium``, ``server``) are registered
here, once for every module, so that a session has one build, one browser and one server.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from book_fixtures import built_book, chromium, server  # noqa: F401  (registered as fixtures here)
from torch import nn

from repmlp_lite.measure import randomize_bn as randomize_bn_everywhere


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


def _randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every BN of ``module`` (or ``module`` itself, a BN) randomised by the package's one routine; eval mode."""
    return randomize_bn_everywhere(module, seed).eval()


def _max_rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def _assert_equivalent(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-10) -> None:
    """The float64 check of a merge: same shape, ``max |actual - expected| < tol``."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    error = (actual - expected).abs().max().item()
    assert error < tol, f"max |actual - expected| = {error:.3g} >= {tol:g}"


@pytest.fixture(scope="session")
def train_steps():
    return _train_steps


@pytest.fixture(scope="session")
def randomize_bn():
    return _randomize_bn


@pytest.fixture(scope="session")
def max_rel():
    return _max_rel


@pytest.fixture(scope="session")
def assert_equivalent():
    return _assert_equivalent


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


def _cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """CIFAR-10's published layout, with 16 training and 8 test images of random pixels."""
    root = tmp_path_factory.mktemp("cifar")
    batches = root / "cifar-10-batches-py"
    batches.mkdir()
    for name, n, seed in (("data_batch_1", 8, 1), ("data_batch_2", 8, 2), ("test_batch", 8, 3)):
        (batches / name).write_bytes(pickle.dumps(_cifar_batch(n, seed)))
    (batches / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    return root
