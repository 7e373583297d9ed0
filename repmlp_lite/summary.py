"""A network's layers as table rows: a narrow alternative to ``print(model)`` for the book's pages."""

from __future__ import annotations

from typing import Any

from torch import nn

from . import fast_training
from .layers import GroupedFC


def _detail(module: nn.Module) -> str:
    """A short description of one layer's shape."""
    if isinstance(module, nn.Conv2d):
        k = "x".join(map(str, module.kernel_size))
        text = f"{module.in_channels} -> {module.out_channels}, {k}"
        if module.stride != (1, 1):
            text += f", stride {module.stride[0]}"
        if module.groups > 1:
            text += f", g={module.groups}"
        return text
    if isinstance(module, GroupedFC):
        out_features, in_per_group = module.weight.shape
        return f"{in_per_group * module.groups} -> {out_features}, g={module.groups}"
    if isinstance(module, nn.Linear):
        return f"{module.in_features} -> {module.out_features}"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return f"{module.num_features} channels"
    if isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
        return f"{module.kernel_size} window"
    return ""


def layer_kind(module: nn.Module) -> str:
    """The layer's class name; for the fast training form's layers (:mod:`repmlp_lite.fast_training`),
    the ``torch.nn`` layer whose numbers they compute (``PartitionBatchNorm1d`` is a ``BatchNorm1d``)."""
    return next(kind for kind in type(module).__mro__ if kind.__module__ != fast_training.__name__).__name__


def layer_table(model: nn.Module) -> list[dict[str, Any]]:
    """One row per layer with its own parameters (and per pooling layer), in forward-definition order.

    Columns: ``name`` (dotted path in ``model``), ``layer`` (:func:`layer_kind`), ``shape`` (e.g. ``"16 -> 8, 3x3"``),
    ``bias`` (for convs and FCs) and ``params``.
    """
    rows = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own and not isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
            continue
        bias = getattr(module, "bias", None) if isinstance(module, (nn.Conv2d, nn.Linear, GroupedFC)) else None
        rows.append({
            "name": name,
            "layer": layer_kind(module),
            "shape": _detail(module),
            "bias": "yes" if bias is not None else "",
            "params": sum(p.numel() for p in own),
        })
    return rows
