"""A small model zoo in timm's style: ``create_model(name)`` builds a network of the papers' tables.

Each builder is registered under its name with :func:`register_model` and takes ``num_classes``
(plus its own keyword arguments, all named in its signature: :func:`model_keywords`).
``create_model(name, deploy=True)`` returns the inference form, whose ``state_dict`` is what
``repmlp_lite.deploy(model).state_dict()`` holds.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from . import reparameterize

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``builder(num_classes=..., <its own keywords>) -> nn.Module`` under ``name``; the
    builder names every argument it takes, so that its signature says what it accepts."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        kinds = {p.kind for p in inspect.signature(builder).parameters.values()}
        if inspect.Parameter.VAR_KEYWORD in kinds or inspect.Parameter.VAR_POSITIONAL in kinds:
            raise ValueError(f"the builder of {name!r} must name every argument it takes (no *args, **kwargs)")
        _REGISTRY[name] = builder
        return builder

    return add


def list_models(pattern: str = "*") -> list[str]:
    """The registered names matching the shell-style ``pattern``, sorted."""
    return sorted(fnmatch.filter(_REGISTRY, pattern))


def model_keywords(name: str) -> tuple[str, ...]:
    """The keyword arguments the builder of ``name`` takes, in its signature's order (``num_classes`` first)."""
    _check_name(name)
    return tuple(inspect.signature(_REGISTRY[name]).parameters)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; list_models() gives the {len(_REGISTRY)} known names")


def create_model(name: str, num_classes: int | None = None, deploy: bool = False, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``deploy=True`` gives its inference form (eval mode).

    ``num_classes=None`` keeps the builder's default: 1000 for the ImageNet nets, 10 for the CIFAR ones.
    A keyword the builder does not take raises ``ValueError`` naming it and those it takes.
    """
    keywords = model_keywords(name)
    unknown = [key for key in kwargs if key not in keywords]
    if unknown:
        raise ValueError(f"model {name!r} takes no argument {unknown[0]!r}; it takes {', '.join(keywords)}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = _REGISTRY[name](**kwargs)
    if deploy:
        model = reparameterize.deploy(model)
    return model
