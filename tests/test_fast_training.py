"""The training form at the hardware's speed (repmlp_lite.fast_training) against the reference formulation:
the hand-written BatchNorm against PyTorch's (values, gradients, running statistics; gradcheck), the widened
depthwise conv against nn.Conv2d, and whole blocks, nets and zoo models after a few SGD steps in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repmlp_lite import RepMLPBlock, RepMLPNetBlock, check_equivalence, create_model
from repmlp_lite import fast_training as ft
from repmlp_lite.train_step_speed import reference_form

pytestmark = pytest.mark.usefixtures("single_thread")


def _assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to 1e-10, relative to the largest entry of ``expected`` where that is above 1 (the gradients
    of a whole net after a few steps reach the hundreds)."""
    scale = max(1.0, expected.abs().max().item())
    assert actual.shape == expected.shape
    error = (actual - expected).abs().max().item() / scale
    assert error < 1e-10, f"max |actual - expected| / {scale:.3g} = {error:.3g}"


def _forward_backward(layers: tuple[nn.Module, ...], x: torch.Tensor, gen: torch.Generator):
    """Each layer on its own copy of ``x``, then the backward of one random gradient through each: the
    outputs and the input gradients."""
    xs = [x.clone().requires_grad_() for _ in layers]
    ys = [layer(copy) for layer, copy in zip(layers, xs)]
    grad = torch.randn(ys[0].shape, generator=gen, dtype=x.dtype)
    for y in ys:
        y.backward(grad)
    return ys, [copy.grad for copy in xs]


@pytest.fixture
def hand_bn(monkeypatch):
    """The hand-written BatchNorm on this CPU for any size (by default it runs on GPUs only, from 2**18
    values per channel), so that the CPU tests check the GPU's formulation."""
    monkeypatch.setitem(ft.MIN_VALUES_PER_CHANNEL, "cpu", 2)


def _graph_names(t: torch.Tensor) -> set[str]:
    """The names of the autograd nodes behind ``t``."""
    names, todo, seen = set(), [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo += [next_node for next_node, _ in node.next_functions]
    return names


# ---- the hand-written BatchNorm -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 3), (5, 3, 4), (4, 3, 2, 5)])
def test_batch_norm_function_backward_passes_gradcheck(shape):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1).requires_grad_()
    weight = (torch.rand(3, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    bias = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: ft.BatchNormFunction.apply(*t, 1e-5)[0], (x, weight, bias))
    assert torch.autograd.gradcheck(lambda t: ft.BatchNormFunction.apply(t, None, None, 1e-5)[0], (x,))


@pytest.mark.parametrize("shape", [(12, 4), (6, 4, 5), (3, 4, 6, 5)])
@pytest.mark.parametrize("options", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}])
def test_partition_batch_norm_is_torchs_batch_norm(hand_bn, assert_equivalent, shape, options):
    """Outputs, input and parameter gradients, running statistics and the batch count over 3 training
    steps (float64), then eval mode: all PyTorch's."""
    fast = (ft.PartitionBatchNorm1d if len(shape) < 4 else ft.PartitionBatchNorm2d)(4, **options).double()
    ref = reference_form(fast)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2
        ys, grads = _forward_backward((fast, ref), x, gen)
        assert "BatchNormFunctionBackward" in _graph_names(ys[0])
        assert "BatchNormFunctionBackward" not in _graph_names(ys[1])
        assert_equivalent(*ys)
        assert_equivalent(*grads)
    for a, b in zip(fast.parameters(), ref.parameters()):
        assert_equivalent(a.grad, b.grad)
    for (name, a), b in zip(fast.named_buffers(), ref.buffers()):
        assert a.dtype == b.dtype and torch.allclose(a, b, rtol=0, atol=1e-12), name
    if fast.track_running_stats:
        assert fast.num_batches_tracked.item() == 3
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        assert_equivalent(fast.eval()(x), ref.eval()(x))


def test_partition_batch_norm_runs_torchs_kernel_where_that_is_faster(hand_bn, monkeypatch):
    """PyTorch's kernel in eval mode, on non-contiguous input, below the size threshold, and on a device type
    not listed (here: the CPU, with the threshold of the GPU only)."""
    bn = ft.PartitionBatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    assert "BatchNormFunctionBackward" in _graph_names(bn(x))
    assert "BatchNormFunctionBackward" not in _graph_names(bn(x.transpose(2, 3)))
    assert "BatchNormFunctionBackward" not in _graph_names(bn.eval()(x))
    monkeypatch.setitem(ft.MIN_VALUES_PER_CHANNEL, "cpu", 4 * 25 + 1)
    assert "BatchNormFunctionBackward" not in _graph_names(bn.train()(x))
    monkeypatch.delitem(ft.MIN_VALUES_PER_CHANNEL, "cpu")
    assert "BatchNormFunctionBackward" not in _graph_names(bn(torch.randn(64, 3, 64, 64)))  # 2**18 values
    assert ft.MIN_VALUES_PER_CHANNEL == {"cuda": 2**18}


def test_one_value_per_channel_is_refused_as_by_torch(hand_bn):
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        ft.PartitionBatchNorm1d(3)(torch.randn(1, 3))


def test_bf16_autocast_keeps_float32_statistics(hand_bn, max_rel):
    """Under bf16 autocast the output is bf16 and the statistics float32, as PyTorch's BN gives them."""
    fast = ft.PartitionBatchNorm2d(4)
    ref = reference_form(fast)
    x = torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3 + 5
    xs = [x.bfloat16().requires_grad_() for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ys = [fast(xs[0]), ref(xs[1])]
    assert ys[0].dtype == ys[1].dtype == torch.bfloat16
    assert max_rel(ys[0].float(), ys[1].float()) < 1e-2
    grad = torch.randn_like(ys[0])
    for y in ys:
        y.backward(grad)
    assert xs[0].grad.dtype == torch.bfloat16 and max_rel(xs[0].grad.float(), xs[1].grad.float()) < 2e-2
    assert fast.running_var.dtype == torch.float32 and max_rel(fast.running_var, ref.running_var) < 1e-6


def test_sync_batch_norm_replaces_the_partition_batch_norms():
    """Under DDP with --sync-bn the statistics are the processes' together: PyTorch's SyncBatchNorm."""
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(RepMLPNetBlock(8, 4, 4, 2))
    assert not any(isinstance(m, ft._PartitionBatchNorm) for m in synced.modules())
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == 3


# ---- the widened depthwise conv -------------------------------------------------------------------


@pytest.mark.parametrize("batch, channels, kernel, stride, bias", [
    (48, 1, 3, 1, False), (32, 2, 1, 1, False), (96, 3, 5, 1, True), (40, 4, 3, 2, True), (7, 1, 3, 1, False),
    (64, 16, 3, 1, False),
])
def test_partition_conv_is_nn_conv(assert_equivalent, batch, channels, kernel, stride, bias):
    """A depthwise conv widened to (A/r, r*S, h, w): outputs and gradients as nn.Conv2d's (float64)."""
    fast = ft.PartitionConv2d(channels, channels, kernel, stride, kernel // 2, groups=channels, bias=bias).double()
    ref = reference_form(fast)
    gen = torch.Generator().manual_seed(0)
    ys, grads = _forward_backward((fast, ref), torch.randn(batch, channels, 6, 5, dtype=torch.float64), gen)
    assert ("RepeatBackward0" in _graph_names(ys[0])) == (ft.widening(batch, channels) > 1)
    assert_equivalent(*ys)
    assert_equivalent(*grads)
    for a, b in zip(fast.parameters(), ref.parameters()):
        assert_equivalent(a.grad, b.grad)


def test_widening_stays_within_the_width():
    """T224's depthwise branches at batch 128: (8192, 1, 56, 56) runs as (32, 256, 56, 56), (4096, 4, 28, 28)
    as (64, 256, 28, 28); its later stages (S = 16 and 128) as they are."""
    assert ft.WIDE_CHANNELS == 256 and ft.NARROW_CHANNELS == 16 and ft.MIN_WIDE_BATCH == 16
    assert ft.widening(8192, 1) == 256 and ft.widening(4096, 4) == 64 and ft.widening(2048, 16) == 1
    assert ft.widening(64, 1) == 4 and ft.widening(256, 4) == 16  # 16 maps of 4 and 64 channels
    assert ft.widening(31, 1) == 1 and ft.widening(48, 8) == 3 and ft.widening(512, 128) == 1


def test_other_convs_run_as_nn_conv():
    conv = ft.PartitionConv2d(4, 6, 3, padding=1, groups=2)
    x = torch.randn(8, 4, 5, 5, requires_grad=True)
    assert "RepeatBackward0" not in _graph_names(conv(x))
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1, groups=2))


# ---- whole models: the fast training form against the reference formulation ---------------------------


MODELS = {  # name: (builder, input shape); enough values per BN channel that float64 rounding stays small,
    # and enough maps that the RepMLPNet blocks' conv branches are widened (MIN_WIDE_BATCH)
    "RepMLPBlock, global perceptron, g=2": (lambda: RepMLPBlock(8, 8, 8, 8, 4, 4, groups=2), (3, 8, 8, 8)),
    "RepMLPBlock, no global perceptron, g=1": (
        lambda: RepMLPBlock(4, 6, 8, 8, 4, 4, global_perceptron=False, reparam_conv_k=(1, 3, 5)), (3, 4, 8, 8)),
    "RepMLPNetBlock, S=1": (lambda: RepMLPNetBlock(6, 3, 2, num_sharesets=1), (3, 6, 6, 4)),
    "RepMLPNetBlock, S=4": (lambda: RepMLPNetBlock(8, 3, 2, num_sharesets=4), (8, 8, 6, 4)),
    "small_repmlp_resnet": (lambda: create_model("small_repmlp_resnet", width=8, h=4, image_size=16), (3, 3, 16, 16)),
    "small_repmlpnet": (lambda: create_model("small_repmlpnet"), (8, 1, 32, 32)),
    "small_repmlpnet, S=1 and 8": (lambda: create_model("small_repmlpnet", channels=(8, 16), sharesets=(1, 8)),
                                   (8, 1, 32, 32)),
    "small_repmlpnet, 4 partitions": (lambda: create_model("small_repmlpnet", partitions_per_side=2), (3, 1, 32, 32)),
    "repmlp_pure_mlp_cifar, narrower": (lambda: create_model("repmlp_pure_mlp_cifar", channels=(4, 8, 8)),
                                        (4, 3, 32, 32)),
}


@pytest.mark.parametrize("name", MODELS)
def test_fast_training_form_is_the_reference_formulation(hand_bn, name):
    """Three SGD steps of the fast form in float64, the reference formulation given the fast form's parameters
    before each (so that rounding does not compound through the updates): every output and every parameter's
    gradient at every step, and every buffer (running statistics, batch counts: each form's own) at the end
    equal (:func:`_assert_same`); then the merge is exact."""
    build, shape = MODELS[name]
    torch.manual_seed(0)
    fast = build().double().train()
    ref = reference_form(fast)
    optimizer = torch.optim.SGD(fast.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        with torch.no_grad():
            for a, b in zip(fast.parameters(), ref.parameters()):
                b.copy_(a)
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5 + 0.3
        outs = [fast(x), ref(x)]
        assert "BatchNormFunctionBackward" in _graph_names(outs[0])
        assert "RepeatBackward0" in _graph_names(outs[0]) or "repmlpnet" not in name.lower()
        _assert_same(*outs)
        grad = torch.randn(outs[0].shape, generator=gen, dtype=torch.float64)
        for model, out in zip((fast, ref), outs):
            model.zero_grad()
            out.backward(grad)
        for (key, a), b in zip(fast.named_parameters(), ref.parameters()):
            assert a.grad is not None, key
            _assert_same(a.grad, b.grad)
        optimizer.step()
    for a, b in zip(fast.buffers(), ref.buffers()):
        _assert_same(a.double(), b.double())
    assert check_equivalence(fast, shape).max_rel < 1e-12  # eval mode: outputs up to 1e5 (running statistics near 1)


def test_compiled_fast_form_is_the_reference_formulation(hand_bn, assert_equivalent):
    """The hand-written BN and the widened conv traced by torch.compile (AOTAutograd, forward and backward;
    no code generation, which takes minutes on a CPU) give the reference's outputs and gradients."""
    torch.manual_seed(0)
    fast = RepMLPNetBlock(6, 3, 2, num_sharesets=3).double().train()
    ref = reference_form(fast)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 6, 6, 4, dtype=torch.float64)
    outs = [compiled(x), ref(x)]
    assert_equivalent(*outs)
    for out in outs:
        out.square().sum().backward()
    for a, b in zip(fast.parameters(), ref.parameters()):
        assert_equivalent(a.grad, b.grad)


def test_for_speed_converts_and_compiles(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, mode: compiled.append(mode) or model)
    model = create_model("small_repmlpnet")
    assert ft.for_speed(model) is model and not compiled
    assert ft.for_speed(model, "reduce-overhead", channels_last=True) is model and compiled == ["reduce-overhead"]
    assert model.embedding.conv.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        ft.for_speed(model, "fast")
