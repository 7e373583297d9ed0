"""Argument checks shared by the package: each raises a ``ValueError`` naming the parameter and the rule."""

from __future__ import annotations

import torch


def check_positive(name: str, value: int) -> None:
    """Raise unless ``value`` is a positive integer."""
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    """Raise unless ``divisor`` divides ``value``; the message names both."""
    if value % divisor != 0:
        raise ValueError(f"{name}={value} must be divisible by {divisor_name}={divisor}")


def check_odd_kernel(name: str, k: int) -> None:
    """Raise unless ``k`` is a positive odd kernel size (needed for "same" padding ``k // 2``)."""
    check_positive(name, k)
    if k % 2 == 0:
        raise ValueError(f"{name}={k} is even: 'same' padding k//2 needs an odd kernel size")


def check_4d(name: str, x: torch.Tensor) -> None:
    """Raise unless ``x`` is a 4-D ``(N, C, H, W)`` tensor."""
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor (N, C, H, W), got shape {tuple(x.shape)}")
