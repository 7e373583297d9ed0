"""conv_as_fc: the FC kernel built by conv_to_fc does exactly what F.conv2d does.

Property tests (hypothesis) draw (N, C, O, g, K, p, h, w) at random: every odd K with "same"
padding, explicit paddings p >= 0 (even K and p > K//2 included), groups dividing C and O,
non-square maps and C != O. The kernel is also checked against torch.func.jacrev of the conv:
the FC matrix of a linear map is its Jacobian.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from repmlp_lite.conv_as_fc import (
    conv_bias_to_fc,
    conv_output_size,
    conv_to_fc,
    fc_forward,
    grouped_to_dense,
)

pytestmark = pytest.mark.usefixtures("single_thread")

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None)


@st.composite
def conv_cases(draw, same_padding: bool):
    """A random stride-1 conv problem: dict with n, c, o, g, k, p (None = "same"), h, w, seed."""
    g = draw(st.integers(1, 3))
    c = g * draw(st.integers(1, 3))
    o = g * draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    if same_padding:
        k = draw(st.sampled_from([1, 3, 5, 7]))
        p = None
        min_size = 1
    else:
        k = draw(st.integers(1, 6))
        p = draw(st.integers(0, k + 1))  # up to p > K//2, so outputs larger than inputs too
        min_size = max(1, k - 2 * p)  # h + 2p >= K: a non-empty output
    h = draw(st.integers(min_size, min_size + 6))
    w = draw(st.integers(min_size, min_size + 6))
    seed = draw(st.integers(0, 2**16))
    return dict(n=n, c=c, o=o, g=g, k=k, p=p, h=h, w=w, seed=seed)


def _problem(case: dict, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(case["n"], case["c"], case["h"], case["w"], generator=gen, dtype=dtype)
    kernel = torch.randn(case["o"], case["c"] // case["g"], case["k"], case["k"], generator=gen, dtype=dtype)
    pad = case["k"] // 2 if case["p"] is None else case["p"]
    return x, kernel, pad


def _check_fc_matches_conv(case: dict, dtype: torch.dtype) -> tuple[float, float, float]:
    """(max abs err of fc_forward, of the dense route, max |reference|) against F.conv2d."""
    x, kernel, pad = _problem(case, dtype)
    g, h, w = case["g"], case["h"], case["w"]
    expected = F.conv2d(x, kernel, padding=pad, groups=g)
    out_h, out_w = expected.shape[2:]
    assert (out_h, out_w) == (conv_output_size(h, case["k"], pad), conv_output_size(w, case["k"], pad))

    fc = conv_to_fc(kernel, h, w, padding=case["p"], groups=g)
    assert fc.shape == (case["o"] * out_h * out_w, case["c"] // g * h * w)
    assert fc.dtype == dtype

    grouped = fc_forward(x, fc, groups=g, out_hw=(out_h, out_w))
    dense = grouped_to_dense(fc, g)
    assert dense.shape == (case["o"] * out_h * out_w, case["c"] * h * w)
    via_dense = (x.reshape(x.shape[0], -1) @ dense.t()).reshape(expected.shape)
    assert grouped.shape == expected.shape
    return (
        (grouped - expected).abs().max().item(),
        (via_dense - expected).abs().max().item(),
        expected.abs().max().item(),
    )


@PROPERTY
@given(conv_cases(same_padding=True))
def test_conv_to_fc_same_padding_float64(case):
    err_grouped, err_dense, _ = _check_fc_matches_conv(case, torch.float64)
    assert err_grouped < 1e-10
    assert err_dense < 1e-10


@PROPERTY
@given(conv_cases(same_padding=False))
def test_conv_to_fc_explicit_padding_float64(case):
    err_grouped, err_dense, _ = _check_fc_matches_conv(case, torch.float64)
    assert err_grouped < 1e-10
    assert err_dense < 1e-10


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(st.one_of(conv_cases(same_padding=True), conv_cases(same_padding=False)))
def test_conv_to_fc_float32_relative(case):
    err_grouped, err_dense, scale = _check_fc_matches_conv(case, torch.float32)
    assert err_grouped / scale < 1e-5
    assert err_dense / scale < 1e-5


# Corner cases named explicitly, so they are covered whatever hypothesis draws.
@pytest.mark.parametrize(
    "case",
    [
        dict(n=2, c=3, o=5, g=1, k=1, p=None, h=4, w=4, seed=1),  # C != O, K = 1
        dict(n=2, c=4, o=6, g=2, k=3, p=None, h=3, w=5, seed=2),  # groups, non-square
        dict(n=1, c=6, o=3, g=3, k=5, p=None, h=5, w=2, seed=3),  # K > w
        dict(n=2, c=2, o=2, g=1, k=7, p=None, h=4, w=6, seed=4),  # K = 7 > h, w
        dict(n=2, c=2, o=4, g=2, k=2, p=1, h=4, w=3, seed=5),  # even K, explicit padding
        dict(n=1, c=3, o=2, g=1, k=4, p=3, h=2, w=5, seed=6),  # even K, p > K//2: output grows
        dict(n=2, c=2, o=3, g=1, k=3, p=0, h=5, w=4, seed=7),  # "valid" conv: output shrinks
        dict(n=1, c=4, o=4, g=4, k=3, p=2, h=1, w=3, seed=8),  # depthwise, p > K//2, h = 1
    ],
    ids=lambda c: f"C{c['c']}O{c['o']}g{c['g']}K{c['k']}p{c['p']}_{c['h']}x{c['w']}",
)
def test_conv_to_fc_corner_cases(case):
    err_grouped, err_dense, _ = _check_fc_matches_conv(case, torch.float64)
    assert err_grouped < 1e-10
    assert err_dense < 1e-10


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(st.one_of(conv_cases(same_padding=True), conv_cases(same_padding=False)))
def test_dense_kernel_is_the_jacobian_of_the_conv(case):
    """torch.func.jacrev of the conv (one image, flattened) is the dense FC matrix, entry for entry."""
    x, kernel, pad = _problem(case, torch.float64)
    g = case["g"]

    def conv(img: torch.Tensor) -> torch.Tensor:
        return F.conv2d(img[None], kernel, padding=pad, groups=g)[0]

    jac = torch.func.jacrev(conv)(x[0])  # (O, h', w', C, h, w)
    jac = jac.reshape(jac.shape[0] * jac.shape[1] * jac.shape[2], -1)
    dense = grouped_to_dense(conv_to_fc(kernel, case["h"], case["w"], padding=case["p"], groups=g), g)
    assert dense.shape == jac.shape
    assert (dense - jac).abs().max().item() < 1e-12


def test_fc_kernel_entries_follow_the_documented_layout():
    """Row o*h'*w' + i*w' + j, column c*h*w + y*w + x holds F[o, c, y - i + p, x - j + p] (0 outside)."""
    torch.manual_seed(0)
    o_ch, c_ch, k, p, h, w = 2, 3, 3, 1, 4, 5
    kernel = torch.randn(o_ch, c_ch, k, k, dtype=torch.float64)
    fc = conv_to_fc(kernel, h, w, padding=p)
    out_h, out_w = conv_output_size(h, k, p), conv_output_size(w, k, p)
    expected = torch.zeros(o_ch * out_h * out_w, c_ch * h * w, dtype=torch.float64)
    for o in range(o_ch):
        for i in range(out_h):
            for j in range(out_w):
                for c in range(c_ch):
                    for y in range(h):
                        for x in range(w):
                            a, b = y - i + p, x - j + p
                            if 0 <= a < k and 0 <= b < k:
                                expected[o * out_h * out_w + i * out_w + j, c * h * w + y * w + x] = kernel[o, c, a, b]
    assert torch.equal(fc, expected)


def test_grouped_to_dense_is_block_diagonal():
    fc = torch.arange(24, dtype=torch.float64).reshape(6, 4)  # g = 2: rows 0-2 group 0, rows 3-5 group 1
    dense = grouped_to_dense(fc, 2)
    assert dense.shape == (6, 8)
    assert torch.equal(dense[:3, :4], fc[:3])
    assert torch.equal(dense[3:, 4:], fc[3:])
    assert torch.count_nonzero(dense[:3, 4:]) == 0
    assert torch.count_nonzero(dense[3:, :4]) == 0


@pytest.mark.parametrize("k,p,g", [(3, None, 1), (5, None, 2), (2, 1, 2), (3, 0, 1)])
def test_conv_bias_to_fc_matches_conv_with_bias(k, p, g, assert_equivalent):
    gen = torch.Generator().manual_seed(k * 10 + g)
    n, c, o, h, w = 2, 4, 6, 5, 3
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    kernel = torch.randn(o, c // g, k, k, generator=gen, dtype=torch.float64)
    bias = torch.randn(o, generator=gen, dtype=torch.float64)
    pad = k // 2 if p is None else p
    expected = F.conv2d(x, kernel, bias, padding=pad, groups=g)
    out_h, out_w = expected.shape[2:]
    fc_bias = conv_bias_to_fc(bias, out_h, out_w)
    assert fc_bias.shape == (o * out_h * out_w,)
    assert torch.equal(fc_bias.reshape(o, out_h, out_w), bias[:, None, None].expand(o, out_h, out_w))
    actual = fc_forward(x, conv_to_fc(kernel, h, w, padding=p, groups=g), fc_bias, groups=g, out_hw=(out_h, out_w))
    assert_equivalent(actual, expected)


def test_conv_output_size():
    assert conv_output_size(5, 3, 1) == 5
    assert conv_output_size(5, 3, 0) == 3
    assert conv_output_size(2, 4, 3) == 5


# ---- bad inputs: a ValueError naming the parameter -------------------------------------------


@pytest.mark.parametrize("k", [2, 4, 6])
def test_even_kernel_with_default_padding_raises(k):
    with pytest.raises(ValueError, match=rf"kernel size K={k} is even"):
        conv_to_fc(torch.randn(2, 2, k, k), 4, 4)


def test_even_kernel_with_explicit_padding_is_accepted():
    assert conv_to_fc(torch.randn(2, 2, 4, 4), 4, 4, padding=2).shape == (2 * 5 * 5, 2 * 4 * 4)


@pytest.mark.parametrize("padding", [-1, -3])
def test_negative_padding_raises(padding):
    with pytest.raises(ValueError, match=r"padding must be None or an integer >= 0"):
        conv_to_fc(torch.randn(2, 2, 3, 3), 4, 4, padding=padding)


@pytest.mark.parametrize("h,w", [(3, 8), (8, 2)])
def test_padding_leaving_no_output_raises(h, w):
    with pytest.raises(ValueError, match=r"padding=0 with kernel size K=5 leaves no output"):
        conv_to_fc(torch.randn(2, 2, 5, 5), h, w, padding=0)


def test_out_channels_not_divisible_by_groups_raises():
    with pytest.raises(ValueError, match=r"out channels O=5 must be divisible by groups=2"):
        conv_to_fc(torch.randn(5, 1, 3, 3), 4, 4, groups=2)


def test_non_square_or_non_4d_kernel_raises():
    with pytest.raises(ValueError, match=r"kernel must be square"):
        conv_to_fc(torch.randn(2, 2, 3, 1), 4, 4)
    with pytest.raises(ValueError, match=r"kernel must be 4-D"):
        conv_to_fc(torch.randn(2, 3, 3), 4, 4)


@pytest.mark.parametrize("name,h,w,groups", [("h", 0, 4, 1), ("w", 4, -1, 1), ("groups", 4, 4, 0)])
def test_non_positive_sizes_raise(name, h, w, groups):
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer"):
        conv_to_fc(torch.randn(2, 2, 3, 3), h, w, groups=groups)


def test_grouped_to_dense_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"fc_kernel rows=5 must be divisible by groups=2"):
        grouped_to_dense(torch.randn(5, 3), 2)
    with pytest.raises(ValueError, match=r"fc_kernel must be 2-D"):
        grouped_to_dense(torch.randn(2, 3, 4), 1)


def test_conv_bias_to_fc_bad_bias_raises():
    with pytest.raises(ValueError, match=r"bias must be 1-D"):
        conv_bias_to_fc(torch.randn(2, 3), 4, 4)


def test_fc_forward_bad_inputs_raise():
    fc = conv_to_fc(torch.randn(4, 1, 3, 3), 4, 4, groups=2)  # C = 2
    with pytest.raises(ValueError, match=r"in channels C=3 must be divisible by groups=2"):
        fc_forward(torch.randn(1, 3, 4, 4), fc, groups=2)
    with pytest.raises(ValueError, match=r"fc_kernel has 16 columns per group"):
        fc_forward(torch.randn(1, 2, 4, 5), fc, groups=2)
    with pytest.raises(ValueError, match=r"fc_kernel rows=\d+ must be divisible by groups=3"):
        fc_forward(torch.randn(1, 3, 4, 4), torch.randn(16, 16), groups=3)
