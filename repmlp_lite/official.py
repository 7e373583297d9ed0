"""Loading checkpoints written by the authors' code (DingXiaoH/RepMLP) into the zoo's models.

Each model family registers a converter with :func:`register_official`: it renames (and, where
the layouts differ, reshapes) the authors' state dict into this package's keys. :func:`load_official`
then checks the result against the model key by key and loads it strictly. The converter of the
authors' v1 RepMLP-ResNets is in :mod:`repmlp_lite.official_resnets`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

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
