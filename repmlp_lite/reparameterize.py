"""Structural re-parameterization: one way for a module to say it is merged, one routine that merges a
whole model, and the check that the merge changed nothing.

* :class:`Reparameterizable`: the base of every module that has a training form and an inference form
  (the RepMLP block and its global perceptron, conv + BN layers, RepMLPNet's block, unit and net).
  ``deployed`` says which form a module is in; :meth:`~Reparameterizable.switch_to_deploy` merges its
  re-parameterizable submodules first (children first), then folds the module's own parameters
  (:meth:`~Reparameterizable._merge_own`), so a model file never calls a merge routine on its children.
* :func:`reparameterize_model`: ``switch_to_deploy()`` on every outermost re-parameterizable module of any
  ``nn.Module`` (as timm's ``reparameterize_model`` walks a model), in place.
* :func:`deploy`: the inference form the paper measures, on a deep copy: every RepMLP block merged into
  FCs and every conv + BN (and FC + BN) fused into one layer with bias, so no BatchNorm is left.
* :func:`check_equivalence`: the merged copy against the original on one random batch.

Every merge and every comparison runs at full precision on any device
(:func:`~repmlp_lite.precision.full_float32`: no TF32 on a GPU).
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .precision import Precision, current_precision, full_float32


class Reparameterizable(nn.Module, abc.ABC):
    """A module with a training form and a merged inference form that gives the same outputs (eval mode).

    ``deployed`` is ``False`` in the training form and ``True`` once merged. Subclasses call
    ``super().__init__()`` first, branch their forward on ``self.deployed`` and implement
    :meth:`_merge_own`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.deployed = False

    @torch.no_grad()
    @full_float32()
    def switch_to_deploy(self) -> None:
        """Merge in place: every re-parameterizable submodule not yet merged (children first), then this
        module's own parameters, with TF32 off (a GPU would otherwise round the merged kernels to it).
        Raises ``ValueError`` if the module is already merged."""
        self.check_not_merged("switch_to_deploy() was called twice")
        for module in outermost_reparameterizable(self):
            if not module.deployed:
                module.switch_to_deploy()
        self._merge_own()
        self.deployed = True

    @abc.abstractmethod
    def _merge_own(self) -> None:
        """Fold this module's own parameters into their inference form (its re-parameterizable
        submodules are merged already); called once, by :meth:`switch_to_deploy`."""

    def check_not_merged(self, why: str) -> None:
        """Raise ``ValueError("<Class> is already merged: <why>")`` if the module is merged."""
        if self.deployed:
            raise ValueError(f"{type(self).__name__} is already merged: {why}")


def outermost_reparameterizable(module: nn.Module) -> Iterator[Reparameterizable]:
    """The re-parameterizable submodules of ``module`` (not ``module`` itself) with no re-parameterizable
    module between them and ``module``: the ones whose ``switch_to_deploy()`` merges the rest."""
    for child in module.children():
        if isinstance(child, Reparameterizable):
            yield child
        else:
            yield from outermost_reparameterizable(child)


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Merge ``model`` in place: ``switch_to_deploy()`` on ``model`` if it is re-parameterizable, else on
    each of its outermost re-parameterizable submodules; returns ``model``.

    Raises ``ValueError`` if one of them is already merged.
    """
    modules = [model] if isinstance(model, Reparameterizable) else outermost_reparameterizable(model)
    for module in modules:
        module.switch_to_deploy()
    return model


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

    1. :func:`reparameterize_model`: every re-parameterizable module merged (RepMLP blocks,
       :class:`~repmlp_lite.block.RepMLPBlock`; conv + BN layers, :class:`~repmlp_lite.nets.ConvBNLayer`;
       any other family's :class:`Reparameterizable` modules).
    2. Every BatchNorm that directly follows a ``Conv2d`` or ``Linear`` in an ``nn.Sequential``
       is folded into it (``torch.nn.utils.fusion``).

    A BN that follows neither is left in place. Raises ``ValueError`` if a module was already merged.
    """
    merged = reparameterize_model(copy.deepcopy(model).eval())
    _fuse_sequential_pairs(merged)
    return merged.eval()  # the modules put in (Identity, fused layers) start in train mode


def batchnorms_left(model: nn.Module) -> list[str]:
    """Names of the BatchNorm modules still in ``model`` (none in a fully deployed zoo model)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class Equivalence(NamedTuple):
    """How far the merged model is from the training form (eval mode) on one random batch, and where."""

    max_abs: float  # max |merged - original|
    max_rel: float  # max_abs / max |original|
    precision: Precision  # the device and dtype both ran in, and TF32 (off): str() says it in words


@torch.no_grad()
def check_equivalence(
    model: nn.Module,
    input_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> Equivalence:
    """Compare ``model`` (eval mode) with ``deploy(model)`` on a standard-normal input of ``input_shape``.

    Both run in ``dtype`` on ``model``'s device under :func:`~repmlp_lite.precision.full_float32` (on a GPU,
    torch's default TF32 convs would add up to about 5e-4 of relative error to the training form alone);
    the result's ``precision`` says where and how. ``model`` itself is not modified.
    """
    with full_float32():
        original = copy.deepcopy(model).to(dtype).eval()
        merged = deploy(original)
        device = next(original.parameters()).device
        x = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)
        expected, actual = original(x), merged(x)
        precision = current_precision(device, dtype)
    max_abs = (actual - expected).abs().max().item()
    return Equivalence(max_abs, max_abs / expected.abs().max().item(), precision)
