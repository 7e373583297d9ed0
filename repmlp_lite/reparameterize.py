"""Structural re-parameterization: one way for a module to say it is merged, one routine that merges a
whole model, and the check that the merge changed nothing.

* :class:`Reparameterizable`: the base of every module that has a training form and an inference form
  (the RepMLP block and its global perceptron, conv + BN and FC + BN layers, RepMLPNet's block, unit
  and net).
  ``deployed`` says which form a module is in; :meth:`~Reparameterizable.switch_to_deploy` merges its
  re-parameterizable submodules first (children first), then folds the module's own parameters
  (:meth:`~Reparameterizable._merge_own`), so a model file never calls a merge routine on its children.
* :func:`reparameterize_model`: ``switch_to_deploy()`` on every outermost re-parameterizable module of any
  ``nn.Module`` (as timm's ``reparameterize_model`` walks a model), in place; the one walk of every merge
  (RepMLPNet's Locality Injection alone, :func:`~repmlp_lite.repmlpnet.inject_locality`, walks it too).
* :func:`deploy`: the inference form the paper measures: :func:`reparameterize_model` on a deep copy in
  eval mode. In the zoo's nets every RepMLP block becomes FCs and every conv + BN (and FC + BN) one layer
  with bias, so no BatchNorm is left (RepMLPNet keeps one per unit, chapter 7).
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


def outermost_reparameterizable(
    module: nn.Module, kind: type[Reparameterizable] = Reparameterizable
) -> Iterator[Reparameterizable]:
    """The submodules of ``module`` (not ``module`` itself) of class ``kind`` with no module of that class
    between them and ``module``: the ones whose ``switch_to_deploy()`` merges the rest."""
    for child in module.children():
        if isinstance(child, kind):
            yield child
        else:
            yield from outermost_reparameterizable(child, kind)


def reparameterize_model(model: nn.Module, kind: type[Reparameterizable] = Reparameterizable) -> nn.Module:
    """Merge ``model`` in place: ``switch_to_deploy()`` on ``model`` if it is re-parameterizable, else on
    each of its outermost re-parameterizable submodules; returns ``model``.

    ``kind``: merge only the modules of that class (each with its own submodules), and nothing else;
    e.g. :class:`~repmlp_lite.repmlpnet.RepMLPNetBlock` for Locality Injection alone. Raises
    ``ValueError`` if one of them is already merged.
    """
    modules = [model] if isinstance(model, kind) else outermost_reparameterizable(model, kind)
    for module in modules:
        module.switch_to_deploy()
    return model


@torch.no_grad()
def deploy(model: nn.Module) -> nn.Module:
    """A merged deep copy of ``model`` in eval mode (:func:`reparameterize_model`); ``model`` is untouched.

    Every :class:`Reparameterizable` module is merged: RepMLP blocks (:class:`~repmlp_lite.block.RepMLPBlock`),
    conv + BN and FC + BN layers (:class:`~repmlp_lite.layers.ConvBNLayer`,
    :class:`~repmlp_lite.layers.LinearBNLayer`), any other family's. A plain ``nn.BatchNorm2d`` of the
    model's own is a module like any other and stays (:func:`batchnorms_left` lists them). Raises
    ``ValueError`` if a module was already merged.
    """
    return reparameterize_model(copy.deepcopy(model).eval())


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
