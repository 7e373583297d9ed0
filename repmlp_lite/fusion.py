"""BN absorbed: a BatchNorm in eval mode is a per-channel affine map, so it folds into a neighbouring linear layer.

In eval mode ``BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta = s * y + t`` with

    s = gamma / sqrt(var + eps),    t = beta - mean * s.

* After a layer ``y = W x + b`` (a conv of any kernel size, an FC, a grouped FC as a 1x1 conv),
  ``BN(y) = (s * W) x + (s * b + t)``: scale output channel ``i``'s weights by ``s[i]``
  (:func:`fuse_conv_bn`, :func:`fuse_linear_bn`).
* Before an FC, ``W BN(x) + b = (W * s) x + (W t + b)``: scale input column ``j`` by ``s[j]``
  (:func:`fuse_bn_linear`, the global perceptron's BN absorbed into FC1: the paper's Sec. 3.4 and
  Appendix C, Alg. 2).

The training-time statistics are frozen: these are equalities in eval mode only. Every merge in the
package folds its BNs with these functions (``tests/test_fusion.py`` checks them against torch's
``torch.nn.utils.fusion``).
"""

from __future__ import annotations

import torch
from torch import nn


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BN as ``s * y + t``: returns ``(s, t)``, each of shape ``(num_features,)``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn must track running statistics (track_running_stats=True) to be fused")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _fuse_after(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm, pixels_per_channel: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``BN(W x + b)`` as one ``(W', b')``; ``weight``'s dim 0 indexes output channels, ``pixels_per_channel``
    consecutive ones per BN channel."""
    if weight.shape[0] != bn.num_features * pixels_per_channel:
        covers = f"has num_features={bn.num_features}"
        if pixels_per_channel > 1:
            covers = f"covers num_features * pixels_per_channel = {bn.num_features * pixels_per_channel}"
        raise ValueError(f"weight has {weight.shape[0]} output channels but bn {covers}")
    scale, shift = bn_scale_shift(bn)
    if pixels_per_channel > 1:
        scale, shift = scale.repeat_interleave(pixels_per_channel), shift.repeat_interleave(pixels_per_channel)
    fused_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    fused_bias = shift if bias is None else bias * scale + shift
    return fused_weight, fused_bias


def fuse_conv_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv followed by BatchNorm2d as one conv with bias (the paper's BN absorption, Sec. 3.4, Eq. 16-17).

    Args:
        weight: conv kernel ``(O, C/g, K, K)`` (any K, any groups; a grouped FC is the K = 1 case).
        bias: conv bias ``(O,)`` or ``None``.
        bn: the BatchNorm2d over the ``O`` output channels.

    Returns:
        ``(weight', bias')`` of shapes ``(O, C/g, K, K)`` and ``(O,)``.
    """
    return _fuse_after(weight, bias, bn)


def fuse_linear_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm, pixels_per_channel: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """FC ``(out, in)`` followed by a BatchNorm over its ``out`` features as one FC with bias ``(out,)``.

    ``pixels_per_channel``: the ``out`` features are a map ``(C, P, Q)`` flattened channel-major, and the
    BN (a BatchNorm2d) covers its ``C`` channels, ``P*Q`` features each (RepMLPNet's FC3 and its BN over
    the share-sets); 1 for a BatchNorm1d over the features themselves.
    """
    return _fuse_after(weight, bias, bn, pixels_per_channel)


def fuse_bn_linear(
    bn: nn.modules.batchnorm._BatchNorm,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pixels_per_channel: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm *before* an FC as one FC: ``W BN(x) + b = W' x + b'``.

    Args:
        bn: a BatchNorm over ``C`` channels of a map ``(N, C, P, Q)`` that is then flattened
            channel-major into ``C * pixels_per_channel`` features (``pixels_per_channel = P*Q``).
        weight: FC weight ``(out, C * pixels_per_channel)``.
        bias: FC bias ``(out,)`` or ``None``.

    Returns:
        ``(weight', bias')`` of shapes ``(out, C * pixels_per_channel)`` and ``(out,)``.
    """
    if weight.shape[1] != bn.num_features * pixels_per_channel:
        raise ValueError(
            f"weight has {weight.shape[1]} input features but bn covers "
            f"num_features * pixels_per_channel = {bn.num_features * pixels_per_channel}"
        )
    scale, shift = bn_scale_shift(bn)
    scale = scale.repeat_interleave(pixels_per_channel)
    shift = shift.repeat_interleave(pixels_per_channel)
    fused_bias = weight @ shift
    if bias is not None:
        fused_bias = fused_bias + bias
    return weight * scale, fused_bias
