"""Structural re-parameterization of a whole model, and the check that it changed nothing."""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from .block import RepMLPBlock
from .repmlpnet import MERGEABLE


def deploy(model: nn.Module) -> nn.Module:
    """A merged deep copy of ``model`` in eval mode: every :class:`RepMLPBlock` in it switched to deploy,
    and every RepMLPNet module (:data:`repmlp_lite.repmlpnet.MERGEABLE`, each merging its own parts).

    Other modules (convs and BNs outside the blocks) are left as they are; ``model`` is untouched.
    Raises ``ValueError`` if a block in it was already merged.
    """
    merged = copy.deepcopy(model).eval()
    for module in list(merged.modules()):
        if isinstance(module, (RepMLPBlock, *MERGEABLE)):
            module.switch_to_deploy()
    return merged


class Equivalence(NamedTuple):
    """How far the merged model is from the training form (eval mode) on one random batch."""

    max_abs: float  # max |merged - original|
    max_rel: float  # max_abs / max |original|


@torch.no_grad()
def check_equivalence(
    model: nn.Module,
    input_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> Equivalence:
    """Compare ``model`` (eval mode) with ``deploy(model)`` on a standard-normal input of ``input_shape``.

    Both run in ``dtype`` on ``model``'s device; ``model`` itself is not modified.
    """
    original = copy.deepcopy(model).to(dtype).eval()
    merged = deploy(original)
    device = next(original.parameters()).device
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)
    expected, actual = original(x), merged(x)
    max_abs = (actual - expected).abs().max().item()
    return Equivalence(max_abs, max_abs / expected.abs().max().item())
