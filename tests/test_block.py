"""block: partition layout, and the RepMLP block's exact merge after real training steps."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repmlp_lite import fast_forward
from repmlp_lite.block import GlobalPerceptron, RepMLPBlock, partition, unpartition
from repmlp_lite.block_costs import grouped_input
from repmlp_lite.conv_as_fc import fc_forward
from repmlp_lite.reparameterize import check_equivalence, deploy

pytestmark = pytest.mark.usefixtures("single_thread")

# ---- partition / unpartition ---------------------------------------------------------------


@pytest.mark.parametrize("shape,h,w", [((2, 3, 8, 8), 4, 4), ((2, 3, 6, 10), 3, 5), ((1, 2, 4, 6), 4, 6), ((3, 1, 6, 4), 1, 2)])
def test_partition_layout_and_round_trip(shape, h, w):
    n, c, height, width = shape
    x = torch.randn(shape)
    parts = partition(x, h, w)
    rows, cols = height // h, width // w
    assert parts.shape == (n * rows * cols, c, h, w)
    # partition k of image img is the slice at block-row i, block-column j, row-major over (i, j)
    for img in range(n):
        for i in range(rows):
            for j in range(cols):
                k = img * rows * cols + i * cols + j
                assert torch.equal(parts[k], x[img, :, i * h:(i + 1) * h, j * w:(j + 1) * w])
    assert torch.equal(unpartition(parts, n, height, width), x)


def test_unpartition_changes_channels():
    """unpartition takes the (possibly different) channel count O from the parts."""
    parts = torch.randn(2 * 2 * 3, 5, 2, 2)
    out = unpartition(parts, 2, 4, 6)
    assert out.shape == (2, 5, 4, 6)
    assert torch.equal(partition(out, 2, 2), parts)


# ---- the block's merge, after real training steps -----------------------------------------

CONFIGS = {
    "base": dict(in_channels=4, out_channels=4, H=8, W=8, h=4, w=4),
    "g2_C!=O_nonsquare_r2": dict(in_channels=4, out_channels=6, H=6, W=8, h=3, w=4, groups=2, fc1_fc2_reduction=2),
    "g4_C>O_hw_nonsquare": dict(in_channels=8, out_channels=4, H=8, W=8, h=4, w=2, groups=4, reparam_conv_k=(1, 3)),
    "single_partition": dict(in_channels=3, out_channels=5, H=4, W=6, h=4, w=6),
    "no_conv_branches": dict(in_channels=4, out_channels=4, H=8, W=4, h=4, w=2, reparam_conv_k=()),
    "reduction4": dict(in_channels=4, out_channels=4, H=8, W=8, h=4, w=4, fc1_fc2_reduction=4, reparam_conv_k=(1, 3, 5)),
    "no_global_perceptron": dict(in_channels=2, out_channels=4, H=6, W=6, h=3, w=3, global_perceptron=False),
    "kernel_larger_than_partition": dict(in_channels=2, out_channels=2, H=6, W=4, h=2, w=2, reparam_conv_k=(3, 5)),
}


def _trained_block(train_steps, name: str, seed: int = 0) -> tuple[RepMLPBlock, tuple[int, ...]]:
    torch.manual_seed(seed)
    cfg = CONFIGS[name]
    block = RepMLPBlock(**cfg)
    shape = (3, cfg["in_channels"], cfg["H"], cfg["W"])
    train_steps(block, shape, steps=4, seed=seed)
    return block, shape


def _assert_bn_stats_trained(block: RepMLPBlock) -> None:
    bns = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns
    for bn in bns:
        assert bn.num_batches_tracked.item() == 4
        assert bn.running_mean.abs().max() > 1e-3
        assert (bn.running_var - 1).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(CONFIGS))
def test_block_merge_is_exact_float64(train_steps, name):
    block, shape = _trained_block(train_steps, name)
    _assert_bn_stats_trained(block)

    eq = check_equivalence(block, shape, dtype=torch.float64, seed=1)
    assert eq.max_abs < 1e-10

    # the same, directly
    original = copy.deepcopy(block).double().eval()
    merged = deploy(original)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = original(x), merged(x)
    assert actual.shape == (shape[0], CONFIGS[name]["out_channels"], shape[2], shape[3])
    max_abs = (actual - expected).abs().max().item()
    assert max_abs < 1e-10
    # check_equivalence reports what we measured (same input for the same seed)
    assert eq.max_abs == pytest.approx(max_abs, abs=1e-15)
    assert eq.max_rel == pytest.approx(max_abs / expected.abs().max().item(), abs=1e-15)


@pytest.mark.parametrize("name", ["base", "g2_C!=O_nonsquare_r2", "single_partition", "no_conv_branches"])
def test_block_merge_is_exact_float32(train_steps, max_rel, name):
    block, shape = _trained_block(train_steps, name, seed=2)
    assert check_equivalence(block, shape, dtype=torch.float32, seed=3).max_rel < 1e-5

    original = copy.deepcopy(block).eval()
    merged = deploy(original)
    x = torch.randn(shape)
    with torch.no_grad():
        assert max_rel(merged(x), original(x)) < 1e-5


def test_switch_to_deploy_in_place_keeps_outputs(train_steps, assert_equivalent):
    block, shape = _trained_block(train_steps, "g2_C!=O_nonsquare_r2", seed=4)
    block.double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        before = block(x)
        block.switch_to_deploy()
        after = block(x)
    assert block.deployed
    assert_equivalent(after, before)


def test_merged_fc3_is_the_partition_and_local_perceptron(train_steps, assert_equivalent):
    """merged_fc3 as a grouped FC on the partitions equals FC3 + BN + conv branches."""
    block, _ = _trained_block(train_steps, "g4_C>O_hw_nonsquare", seed=5)
    block.double().eval()
    parts = torch.randn(7, 8, 4, 2, dtype=torch.float64)
    with torch.no_grad():
        expected = block.fc3_bn(block.fc3(parts.flatten(1)))
        for branch in block.local_perceptron.values():
            expected = expected + branch(parts).flatten(1)
        weight, bias = block.merged_fc3()
    assert weight.shape == (4 * 4 * 2, 8 * 4 * 2 // 4) and bias.shape == (4 * 4 * 2,)
    actual = fc_forward(parts, weight, bias, groups=4).flatten(1)
    assert_equivalent(actual, expected)


def test_deployed_block_structure(train_steps):
    block, shape = _trained_block(train_steps, "base", seed=6)
    merged = deploy(block)
    assert merged.deployed and not block.deployed
    assert not any(isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)) for m in merged.modules())
    assert merged.fc3.bias is not None and merged.fc3.bias.shape == (4 * 4 * 4,)
    assert merged.fc3_bn is None and merged.local_perceptron is None
    assert merged.global_perceptron is not None and merged.global_perceptron.bn is None
    assert not merged.training
    # no BN left: train and eval mode agree
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(merged.train()(x), merged.eval()(x))


def test_deploy_leaves_the_original_untouched(train_steps):
    block, shape = _trained_block(train_steps, "base", seed=7)
    block.eval()
    state = {k: v.clone() for k, v in block.state_dict().items()}
    x = torch.randn(shape)
    with torch.no_grad():
        before = block(x)
        deploy(block)
        check_equivalence(block, shape)
        after = block(x)
    assert torch.equal(before, after)
    assert not block.deployed
    assert block.fc3.bias is None and block.fc3_bn is not None
    assert block.global_perceptron.bn is not None
    assert set(block.local_perceptron) == {"conv1", "conv3", "conv5"}
    assert any(isinstance(m, nn.Conv2d) for m in block.modules())
    assert block.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in block.state_dict().items())


def test_single_partition_has_no_global_perceptron():
    assert RepMLPBlock(3, 3, 4, 6, 4, 6).global_perceptron is None
    assert RepMLPBlock(3, 3, 8, 6, 4, 6).global_perceptron is not None
    assert RepMLPBlock(3, 3, 8, 6, 4, 6, global_perceptron=False).global_perceptron is None


def test_global_perceptron_is_pool_bn_fc1_relu_fc2():
    """One value per channel and partition, from the pooled pixels of all partitions at once."""
    torch.manual_seed(0)
    gp = GlobalPerceptron(channels=2, h_parts=2, w_parts=3, h=2, w=2, fc1_fc2_reduction=2).double().eval()
    x = torch.randn(4, 2, 4, 6, dtype=torch.float64)
    v = gp(x)
    assert v.shape == (4, 2, 2, 3)
    pooled = F.avg_pool2d(x, 2)
    expected = gp.fc2(F.relu(gp.fc1(gp.bn(pooled).flatten(1)))).reshape(4, 2, 2, 3)
    assert (v - expected).abs().max().item() < 1e-12


def test_global_perceptron_switch_to_deploy(randomize_bn, assert_equivalent):
    torch.manual_seed(0)
    gp = GlobalPerceptron(channels=3, h_parts=2, w_parts=2, h=2, w=3, fc1_fc2_reduction=3).double()
    randomize_bn(gp.bn, seed=1)
    gp.eval()
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    with torch.no_grad():
        before = gp(x)
        gp.switch_to_deploy()
        after = gp(x)
    assert gp.bn is None
    assert_equivalent(after, before)
    with pytest.raises(ValueError, match=r"GlobalPerceptron is already merged: switch_to_deploy\(\) was called"):
        gp.switch_to_deploy()


# ---- bad inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(reparam_conv_k=(1, 2)), r"reparam_conv_k=2 is even"),
        (dict(reparam_conv_k=(4,)), r"reparam_conv_k=4 is even"),
        (dict(reparam_conv_k=(0,)), r"reparam_conv_k must be a positive integer"),
        (dict(reparam_conv_k=(3, 1, 3)), r"reparam_conv_k=\(3, 1, 3\) repeats a kernel size"),
        (dict(in_channels=5, groups=2), r"in_channels=5 must be divisible by groups=2"),
        (dict(out_channels=6, groups=4), r"out_channels=6 must be divisible by groups=4"),
        (dict(H=9), r"H=9 must be divisible by h=4"),
        (dict(W=10), r"W=10 must be divisible by w=4"),
        (dict(h=0), r"h must be a positive integer"),
        (dict(groups=0), r"groups must be a positive integer"),
        (dict(fc1_fc2_reduction=0), r"fc1_fc2_reduction must be a positive integer"),
        (dict(fc1_fc2_reduction=17), r"fc1_fc2_reduction=17 leaves no hidden unit.*16"),
    ],
)
def test_bad_block_arguments_raise(kwargs, match):
    cfg = dict(in_channels=4, out_channels=4, H=8, W=8, h=4, w=4) | kwargs
    with pytest.raises(ValueError, match=match):
        RepMLPBlock(**cfg)


def test_reduction_at_the_limit_is_accepted():
    block = RepMLPBlock(4, 4, 8, 8, 4, 4, fc1_fc2_reduction=16)  # C*(H/h)*(W/w) = 16: one hidden unit
    assert block.global_perceptron.fc1.out_features == 1


@pytest.mark.parametrize(
    "shape,match",
    [
        ((2, 3, 8, 8), r"input has 3 channels but the block was built for in_channels=4"),
        ((2, 4, 8, 12), r"input is 8x12 but the block was built for H x W = 8x8"),
        ((2, 4, 4, 4), r"input is 4x4 but the block was built for H x W = 8x8"),
        ((4, 8, 8), r"input must be a 4-D tensor"),
    ],
)
def test_bad_input_raises(shape, match):
    block = RepMLPBlock(4, 4, 8, 8, 4, 4)
    with pytest.raises(ValueError, match=match):
        block(torch.randn(shape))


def test_merging_twice_raises():
    block = RepMLPBlock(4, 4, 8, 8, 4, 4).eval()
    block.switch_to_deploy()
    with pytest.raises(ValueError, match=r"RepMLPBlock is already merged: switch_to_deploy\(\) was called"):
        block.switch_to_deploy()
    with pytest.raises(ValueError, match=r"RepMLPBlock is already merged: its conv branches and BNs are gone"):
        block.merged_fc3()
    with pytest.raises(ValueError, match=r"RepMLPBlock is already merged: switch_to_deploy\(\) was called"):
        deploy(block)
    # a deployed block still runs on valid input and rejects bad input
    assert block(torch.randn(1, 4, 8, 8)).shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"in_channels=4"):
        block(torch.randn(1, 2, 8, 8))


# ---- the merged block's fast forward --------------------------------------------------------

FAST = {  # (in, out, H, W, h, w, groups, global perceptron): groups, 1 to 16 partitions, C != O, h != w
    "1_part_g1": (4, 4, 4, 4, 4, 4, 1, True),
    "1_part_g4_c_ne_o": (8, 4, 3, 5, 3, 5, 4, True),
    "4_parts_g2": (4, 6, 8, 8, 4, 4, 2, True),
    "6_parts_g4_nonsquare": (8, 4, 6, 12, 3, 4, 4, True),
    "16_parts_g8": (8, 8, 12, 12, 3, 3, 8, True),
    "9_parts_no_gp": (4, 4, 9, 6, 3, 2, 2, False),
    "2_parts_wide_rows": (2, 4, 5, 14, 5, 7, 1, True),
}


def _fast_pair(train_steps, randomize_bn, name, dtype, batch=5):
    c, o, height, width, h, w, g, gp = FAST[name]
    torch.manual_seed(0)
    block = RepMLPBlock(c, o, height, width, h, w, groups=g, fc1_fc2_reduction=2, global_perceptron=gp)
    train_steps(block, (3, c, height, width), steps=2)
    randomize_bn(block).to(dtype).eval()
    x = torch.randn(batch, c, height, width, dtype=dtype, generator=torch.Generator().manual_seed(1))
    return block, deploy(block), x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", list(FAST))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("batch", [1, 5])  # one image of one partition: the matrix-vector path
def test_merged_forward_equals_the_training_form(train_steps, randomize_bn, name, dtype, tol, batch):
    block, merged, x = _fast_pair(train_steps, randomize_bn, name, dtype, batch)
    c, o, height, width, h, w, g, gp = FAST[name]
    assert (merged.global_perceptron is not None) == (gp and (height, width) != (h, w))
    with torch.no_grad():
        expected = block(x)
        fast = merged(x)
        assert torch.equal(fast, merged.merged_forward(x))  # forward runs the fast path once merged
        readable = merged.reference_forward(x)  # the paper's forward on the merged weights
    assert fast.shape == expected.shape and fast.is_contiguous()
    assert _rel(fast, expected) < tol
    assert _rel(fast, readable) < tol


@pytest.mark.parametrize("name", ["4_parts_g2", "6_parts_g4_nonsquare", "9_parts_no_gp"])
def test_grouped_input_is_the_partitions_plus_v_by_group(train_steps, randomize_bn, name):
    _, merged, x = _fast_pair(train_steps, randomize_bn, name, torch.float64)
    c, _, height, width, h, w, g, _ = FAST[name]
    with torch.no_grad():
        operand = grouped_input(merged, x)
        parts = partition(x, h, w)  # (M, C, h, w)
        gp = merged.global_perceptron
        if gp is not None:
            parts = parts + gp(x).permute(0, 2, 3, 1).reshape(-1, c, 1, 1)
    m = x.shape[0] * (height // h) * (width // w)
    assert operand.shape == (g, m, c // g * h * w) and operand.is_contiguous()
    expected = parts.reshape(m, g, -1).transpose(0, 1)  # group j: channels j*C/g ... of every partition
    assert (operand - expected).abs().max().item() < 1e-12


def test_merged_forward_trains_and_needs_a_merged_block(train_steps, randomize_bn):
    block, merged, x = _fast_pair(train_steps, randomize_bn, "4_parts_g2", torch.float64)
    with pytest.raises(ValueError, match=r"merged_forward needs the merged block"):
        block.merged_forward(x)
    with pytest.raises(ValueError, match=r"input has 2 channels"):
        merged.merged_forward(x[:, :2])
    # gradients flow through the copies (fine-tuning a merged block): the same as the readable path
    merged.zero_grad()
    merged(x).square().sum().backward()
    fast_grads = [p.grad.clone() for p in merged.parameters()]
    merged.zero_grad()
    merged.reference_forward(x).square().sum().backward()
    for fast, readable in zip(fast_grads, (p.grad for p in merged.parameters())):
        assert _rel(fast, readable) < 1e-10


@pytest.mark.parametrize("name", ["1_part_g1", "1_part_g4_c_ne_o"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_one_image_of_one_partition_with_the_weight_on_the_left(train_steps, randomize_bn, monkeypatch, name, dtype, tol):
    """A weight of WEIGHT_LEFT_BYTES or more is multiplied as W @ x for one image of one partition."""
    block, merged, x = _fast_pair(train_steps, randomize_bn, name, dtype, batch=1)
    left_operands = []  # the first matrix of each batched product
    baddbmm = torch.baddbmm
    monkeypatch.setattr(torch, "baddbmm", lambda *args, **kw: left_operands.append(args[1]) or baddbmm(*args, **kw))
    for threshold, weight_left in [(10**12, False), (0, True)]:
        monkeypatch.setattr(fast_forward, "WEIGHT_LEFT_BYTES", threshold)
        with torch.no_grad():
            fast = merged(x)
            expected = block(x)
        assert (left_operands.pop().data_ptr() == merged.fc3.weight.data_ptr()) == weight_left
        assert fast.shape == expected.shape and fast.is_contiguous()
        assert _rel(fast, expected) < tol


def test_merged_forward_reuses_its_buffers_but_never_its_output():
    """Without autograd the operand and product live in per-thread buffers shared by all merged
    blocks; outputs stay the caller's, under no_grad and inference_mode alike, in any order."""
    small = deploy(RepMLPBlock(4, 4, 8, 8, 4, 4, groups=2)).double().eval()
    large = deploy(RepMLPBlock(4, 6, 12, 12, 4, 4, groups=2)).double().eval()
    xs = [torch.randn(3, 4, 8, 8, dtype=torch.float64) for _ in range(2)] + [torch.randn(2, 4, 12, 12, dtype=torch.float64)]
    expected = [small.reference_forward(xs[0]), small.reference_forward(xs[1]), large.reference_forward(xs[2])]
    for mode in (torch.inference_mode, torch.no_grad, torch.inference_mode):
        with mode():
            outs = [small(xs[0]), small(xs[1]), large(xs[2]), small(xs[0])]
        for out, want in zip(outs, expected + expected[:1]):
            assert _rel(out, want) < 1e-12  # no output was overwritten by a later call
    buffers = fast_forward.workspace.buffers
    assert {key[0] for key in buffers} == {"operand", "product"}
    assert all(out.data_ptr() != b.data_ptr() for b in buffers.values() for out in outs)


def test_merged_forward_in_threads_at_once():
    """The buffers are per thread: blocks run concurrently in several threads stay exact."""
    from concurrent.futures import ThreadPoolExecutor

    merged = deploy(RepMLPBlock(8, 8, 16, 16, 4, 4, groups=2)).double().eval()
    xs = [torch.randn(4, 8, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in range(16)]
    expected = [merged.reference_forward(x) for x in xs]

    def run(i: int) -> float:
        with torch.no_grad():
            return max(_rel(merged(xs[i]), expected[i]) for _ in range(20))

    with ThreadPoolExecutor(4) as pool:
        assert max(pool.map(run, range(16))) < 1e-12


@pytest.mark.parametrize("size,traced_batch", [(8, 2), (4, 1)])
def test_merged_forward_traces_with_another_batch_size(monkeypatch, size, traced_batch):
    """The copy's index is cached by shape, and one image of one partition (4x4 maps, batch 1) takes
    the matrix-vector path, but neither while tracing: a traced block takes any batch."""
    monkeypatch.setattr(fast_forward, "WEIGHT_LEFT_BYTES", 0)
    merged = deploy(RepMLPBlock(4, 4, size, size, 4, 4, groups=2)).double()
    traced = torch.jit.trace(merged, torch.randn(traced_batch, 4, size, size, dtype=torch.float64))
    x = torch.randn(5, 4, size, size, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(traced(x), merged(x)) < 1e-12


# ---- the merged weights: the state_dict format, nothing cached --------------------------------------


@pytest.mark.parametrize("name", ["4_parts_g2", "16_parts_g8", "1_part_g1"])
def test_merged_state_dict_loads_into_a_fresh_merged_block(train_steps, randomize_bn, name):
    block, merged, x = _fast_pair(train_steps, randomize_bn, name, torch.float64)
    state = merged.state_dict()
    assert torch.equal(state["fc3.weight"], block.merged_fc3()[0])  # row-major (O*h*w, C*h*w/g), as merged
    c, o, height, width, h, w, g, gp = FAST[name]
    other = deploy(RepMLPBlock(c, o, height, width, h, w, groups=g, fc1_fc2_reduction=2, global_perceptron=gp))
    other.double().load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(other(x), merged(x))


def test_merged_block_follows_weights_changed_in_place(train_steps, randomize_bn):
    """Nothing is cached: weights loaded or scaled after merging change the output at once."""
    _, merged, x = _fast_pair(train_steps, randomize_bn, "4_parts_g2", torch.float64)
    with torch.no_grad():
        before = merged(x)
        merged.fc3.weight.data.mul_(2)  # .data bypasses autograd and the version counter
        merged.global_perceptron.fc1.weight.data.mul_(0.5)
        expected = merged.reference_forward(x)  # the readable path on the scaled weights
        assert _rel(merged(x), expected) < 1e-10 and _rel(merged(x), before) > 0.1
        # a state_dict from another merged block, loaded after merging (as the official loaders do)
        other = deploy(RepMLPBlock(4, 6, 8, 8, 4, 4, groups=2, fc1_fc2_reduction=2).double())
        merged.load_state_dict(other.state_dict())
        assert _rel(merged(x), other(x)) < 1e-12
