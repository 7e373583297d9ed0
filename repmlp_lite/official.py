"""Loading checkpoints written by the authors' code (DingXiaoH/RepMLP) into the zoo's models.

Each model family registers a converter with :func:`register_official`, in the family's own file (as
timm keeps a family's checkpoint filter beside its model): it renames (and, where the layouts differ,
reshapes) the authors' state dict into this package's keys. :func:`load_official` then checks the
result against the model key by key and loads it strictly. The converters: the first paper's
RepMLP-ResNets in :mod:`repmlp_lite.resnets`, RepMLPNet in :mod:`repmlp_lite.repmlpnet`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

StateDict = Mapping[str, torch.Tensor]
Converter = Callable[[nn.Module, StateDict], dict[str, torch.Tensor]]
_CONVERTERS: dict[type[nn.Module], Converter] = {}


def register_official(model_class: type[nn.Module]) -> Callable[[Converter], Converter]:
    """Decorator: ``converter(model, official_state_dict) -> state dict in this package's keys``."""

    def add(converter: Converter) -> Converter:
        _CONVERTERS[model_class] = converter
        return converter

    return add


def load_official(model: nn.Module, state_dict: StateDict) -> nn.Module:
    """Load the authors' checkpoint ``state_dict`` into ``model`` strictly; returns ``model``.

    Raises ``ValueError`` naming the first key that is missing, unexpected or of another shape.
    """
    converter = next((fn for cls, fn in _CONVERTERS.items() if isinstance(model, cls)), None)
    if converter is None:
        raise ValueError(f"no converter for the authors' checkpoints of {type(model).__name__}")
    converted = converter(model, state_dict)
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in converted:
            raise ValueError(f"checkpoint is missing {key!r} (shape {tuple(value.shape)})")
        if converted[key].shape != value.shape:
            raise ValueError(
                f"checkpoint's {key!r} has shape {tuple(converted[key].shape)}, the model needs {tuple(value.shape)}"
            )
    for key in converted:
        if key not in expected:
            raise ValueError(f"checkpoint has {key!r}, which the model does not have")
    model.load_state_dict(converted, strict=True)
    return model


def renamed_state_dict(
    state_dict: StateDict, renames: Sequence[tuple[str, str | Callable[[re.Match[str]], str]]], fc3_suffix: str
) -> dict[str, torch.Tensor]:
    """The authors' state dict with every key rewritten by ``renames`` (``re.sub`` pattern and
    replacement, applied in order); a 4-D tensor whose new key ends with ``fc3_suffix`` (FC3 stored
    as a 1x1-conv kernel ``(out, in/g, 1, 1)``) becomes the matrix ``(out, in/g)`` used here."""
    converted = {}
    for key, value in state_dict.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        converted[key] = value.flatten(1) if key.endswith(fc3_suffix) and value.dim() == 4 else value
    return converted
