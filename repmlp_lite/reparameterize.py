"""Structural re-parameterization of a whole model, and the check that it changed nothing.

:func:`deploy` gives the inference form the paper measures: every RepMLP block merged into FCs and
every conv + BN (and FC + BN) fused into one layer with bias, so no BatchNorm is left.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval


def merge_submodules(module: nn.Module) -> None:
    """Call ``switch_to_deploy()`` on every outermost submodule of ``module`` that defines it.

    A module that defines it merges its own insides (a RepMLP block merges its global perceptron;
    a composite such as a RepMLPNet unit calls this function on itself first), so the submodules of
    a merged module are not visited again.
    """
    for child in module.children():
        _merge(child)


def _merge(module: nn.Module) -> None:
    """``module.switch_to_deploy()`` where it defines one, else the same for its submodules."""
    if callable(getattr(module, "switch_to_deploy", None)):
        module.switch_to_deploy()
    else:
        merge_submodules(module)


def _fuse_sequential_pairs(model: nn.Module) -> None:
    """Inside every ``nn.Sequential``, fold a BatchNorm into the Conv2d or Linear right before it.

    The BN is replaced by ``nn.Identity`` (same indices, no state), the layer by the fused one with bias.
    """
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(1, len(seq)):
            prev, bn = seq[i - 1], seq[i]
            if isinstance(prev, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i - 1], seq[i] = fuse_conv_bn_eval(prev, bn), nn.Identity()
            elif isinstance(prev, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
                seq[i - 1], seq[i] = fuse_linear_bn_eval(prev, bn), nn.Identity()


@torch.no_grad()
def deploy(model: nn.Module) -> nn.Module:
    """A merged deep copy of ``model`` in eval mode; ``model`` is untouched.

    1. ``switch_to_deploy()`` on every outermost module that defines it: RepMLP blocks
       (:class:`~repmlp_lite.block.RepMLPBlock`), conv + BN layers
       (:class:`~repmlp_lite.nets.ConvBNLayer`) and any other family's re-parameterizable modules.
    2. Every BatchNorm that directly follows a ``Conv2d`` or ``Linear`` in an ``nn.Sequential``
       is folded into it (``torch.nn.utils.fusion``).

    A BN that follows neither is left in place. Raises ``ValueError`` if a module was already merged.
    """
    merged = copy.deepcopy(model).eval()
    _merge(merged)
    _fuse_sequential_pairs(merged)
    return merged.eval()  # the modules put in (Identity, fused layers) start in train mode


def batchnorms_left(model: nn.Module) -> list[str]:
    """Names of the BatchNorm modules still in ``model`` (none in a fully deployed zoo model)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


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
