"""fusion: every BN fold equals its unfused form in eval mode, with random (never identity) BN statistics.

Also checked against torch's own folds, ``torch.nn.utils.fusion.fuse_conv_bn_weights`` and
``fuse_linear_bn_weights``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from repmlp_lite.fusion import bn_scale_shift, fuse_bn_linear, fuse_conv_bn, fuse_linear_bn

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64


def _bn_is_not_identity(bn: nn.modules.batchnorm._BatchNorm) -> None:
    assert bn.running_mean.abs().min() > 0 and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))


@pytest.mark.parametrize("affine", [True, False])
def test_bn_scale_shift_is_the_eval_mode_bn(randomize_bn, affine):
    bn = randomize_bn(nn.BatchNorm2d(5, eps=1e-3, affine=affine).to(D), seed=1)
    y = torch.randn(3, 5, 4, 2, dtype=D)
    scale, shift = bn_scale_shift(bn)
    assert scale.shape == shift.shape == (5,)
    expected = bn(y)
    actual = y * scale[:, None, None] + shift[:, None, None]
    assert (actual - expected).abs().max().item() < 1e-12


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("conv_bias", [False, True])
def test_fuse_conv_bn_equals_conv_then_bn(randomize_bn, k, groups, conv_bias, assert_equivalent):
    torch.manual_seed(k * 100 + groups * 10 + conv_bias)
    c, o = 4, 8
    conv = nn.Conv2d(c, o, k, padding=k // 2, groups=groups, bias=conv_bias).to(D)
    bn = randomize_bn(nn.BatchNorm2d(o).to(D), seed=k + groups)
    _bn_is_not_identity(bn)
    x = torch.randn(2, c, 6, 5, dtype=D)
    expected = bn(conv(x))

    weight, bias = fuse_conv_bn(conv.weight, conv.bias, bn)
    assert weight.shape == conv.weight.shape and bias.shape == (o,)
    actual = F.conv2d(x, weight, bias, padding=k // 2, groups=groups)
    assert_equivalent(actual, expected)

    # torch's own fold gives the same weights
    ref_w, ref_b = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    assert (weight - ref_w).abs().max().item() < 1e-12
    assert (bias - ref_b).abs().max().item() < 1e-12


def test_fuse_conv_bn_float32(randomize_bn, max_rel):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=3, bias=False)
    bn = randomize_bn(nn.BatchNorm2d(6), seed=3)
    x = torch.randn(2, 6, 7, 7)
    weight, bias = fuse_conv_bn(conv.weight, None, bn)
    assert weight.dtype == torch.float32
    assert max_rel(F.conv2d(x, weight, bias, padding=1, groups=3), bn(conv(x))) < 1e-5


@pytest.mark.parametrize("linear_bias", [False, True])
def test_fuse_linear_bn_equals_linear_then_bn(randomize_bn, linear_bias, assert_equivalent):
    torch.manual_seed(int(linear_bias))
    fc = nn.Linear(7, 5, bias=linear_bias).to(D)
    bn = randomize_bn(nn.BatchNorm1d(5).to(D), seed=4)
    _bn_is_not_identity(bn)
    x = torch.randn(6, 7, dtype=D)
    expected = bn(fc(x))

    weight, bias = fuse_linear_bn(fc.weight, fc.bias, bn)
    assert weight.shape == (5, 7) and bias.shape == (5,)
    assert_equivalent(F.linear(x, weight, bias), expected)

    ref_w, ref_b = fuse_linear_bn_weights(
        fc.weight, fc.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    assert (weight - ref_w).abs().max().item() < 1e-12
    assert (bias - ref_b).abs().max().item() < 1e-12


@pytest.mark.parametrize("linear_bias", [False, True])
def test_fuse_linear_bn_over_a_map_equals_linear_then_bn2d(randomize_bn, linear_bias, assert_equivalent):
    """An FC whose C*P*Q outputs are a map (C, P, Q), then BN2d over its C channels (RepMLPNet's FC3)."""
    torch.manual_seed(2 + int(linear_bias))
    c, p, q = 3, 2, 3
    fc = nn.Linear(5, c * p * q, bias=linear_bias).to(D)
    bn = randomize_bn(nn.BatchNorm2d(c).to(D), seed=5)
    _bn_is_not_identity(bn)
    x = torch.randn(4, 5, dtype=D)
    weight, bias = fuse_linear_bn(fc.weight, fc.bias, bn, pixels_per_channel=p * q)
    assert_equivalent(F.linear(x, weight, bias), bn(fc(x).reshape(4, c, p, q)).flatten(1))


@pytest.mark.parametrize("p,q", [(1, 1), (2, 3), (4, 4)])
@pytest.mark.parametrize("linear_bias", [False, True])
def test_fuse_bn_linear_equals_bn_then_flatten_then_linear(randomize_bn, p, q, linear_bias, assert_equivalent):
    """BN2d over C channels of (N, C, P, Q), flattened channel-major, then an FC."""
    torch.manual_seed(p * 10 + q)
    c, out = 3, 4
    bn = randomize_bn(nn.BatchNorm2d(c).to(D), seed=p + q)
    _bn_is_not_identity(bn)
    fc = nn.Linear(c * p * q, out, bias=linear_bias).to(D)
    x = torch.randn(5, c, p, q, dtype=D)
    expected = fc(bn(x).flatten(1))

    weight, bias = fuse_bn_linear(bn, fc.weight, fc.bias, pixels_per_channel=p * q)
    assert weight.shape == fc.weight.shape and bias.shape == (out,)
    assert_equivalent(F.linear(x.flatten(1), weight, bias), expected)


def test_fuse_bn_linear_with_batchnorm1d(randomize_bn, assert_equivalent):
    torch.manual_seed(0)
    bn = randomize_bn(nn.BatchNorm1d(6).to(D), seed=9)
    fc = nn.Linear(6, 2).to(D)
    x = torch.randn(4, 6, dtype=D)
    weight, bias = fuse_bn_linear(bn, fc.weight, fc.bias)
    assert_equivalent(F.linear(x, weight, bias), fc(bn(x)))


def test_fusions_do_not_modify_their_inputs(randomize_bn):
    torch.manual_seed(0)
    weight, bias = torch.randn(4, 2, 3, 3, dtype=D), torch.randn(4, dtype=D)
    bn = randomize_bn(nn.BatchNorm2d(4).to(D), seed=2)
    w0, b0, state0 = weight.clone(), bias.clone(), {k: v.clone() for k, v in bn.state_dict().items()}
    fused_w, _ = fuse_conv_bn(weight, bias, bn)
    assert not torch.equal(fused_w, weight)
    assert torch.equal(weight, w0) and torch.equal(bias, b0)
    assert all(torch.equal(v, state0[k]) for k, v in bn.state_dict().items())


# ---- bad inputs ----------------------------------------------------------------------------


def test_bn_without_running_stats_raises():
    bn = nn.BatchNorm2d(3, track_running_stats=False)
    with pytest.raises(ValueError, match=r"track_running_stats"):
        fuse_conv_bn(torch.randn(3, 3, 1, 1), None, bn)


def test_channel_mismatch_raises():
    with pytest.raises(ValueError, match=r"weight has 4 output channels but bn has num_features=3"):
        fuse_conv_bn(torch.randn(4, 2, 3, 3), None, nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match=r"weight has 5 output channels but bn has num_features=6"):
        fuse_linear_bn(torch.randn(5, 2), None, nn.BatchNorm1d(6))
    with pytest.raises(ValueError, match=r"weight has 10 output channels but bn covers num_features \* pixels_per"):
        fuse_linear_bn(torch.randn(10, 2), None, nn.BatchNorm2d(3), pixels_per_channel=4)
    with pytest.raises(ValueError, match=r"num_features \* pixels_per_channel = 12"):
        fuse_bn_linear(nn.BatchNorm2d(3), torch.randn(2, 10), None, pixels_per_channel=4)
