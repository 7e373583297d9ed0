"""A small model zoo in timm's style: ``create_model(name)`` builds a network of the papers' tables.

Each builder is registered under its name with :func:`register_model` and takes ``num_classes``
(plus its own keyword arguments). ``create_model(name, deploy=True)`` returns the inference form,
whose ``state_dict`` is what ``repmlp_lite.deploy(model).state_dict()`` holds.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

from .reparameterize import deploy as to_inference_form

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``builder(num_classes=..., **kwargs) -> nn.Module`` under ``name``."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return add


def list_models(pattern: str = "*") -> list[str]:
    """The registered names matching the shell-style ``pattern``, sorted."""
    return sorted(fnmatch.filter(_REGISTRY, pattern))


def create_model(name: str, num_classes: int | None = None, deploy: bool = False, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``deploy=True`` gives its inference form (eval mode).

    ``num_classes=None`` keeps the builder's default: 1000 for the ImageNet nets, 10 for the CIFAR ones.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; list_models() gives the {len(_REGISTRY)} known names")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = _REGISTRY[name](**kwargs)
    if deploy:
        model = to_inference_form(model)
    return model
