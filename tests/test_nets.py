"""nets: output shapes, and the whole-net merge is exact after real training steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from repmlp_lite.block import RepMLPBlock
from repmlp_lite.nets import (
    RepMLPBottleneck,
    ResNetBottleneck,
    repmlp_light_block,
    small_conv_resnet,
    small_repmlp_resnet,
)
from repmlp_lite.reparameterize import batchnorms_left, check_equivalence, deploy

pytestmark = pytest.mark.usefixtures("single_thread")


def _blocks(model: nn.Module) -> list[RepMLPBlock]:
    return [m for m in model.modules() if isinstance(m, RepMLPBlock)]


# ---- shapes and structure ------------------------------------------------------------------


def test_resnet_bottleneck_shape_and_stride():
    torch.manual_seed(0)
    net = ResNetBottleneck(8, 2, 8)
    assert isinstance(net.shortcut, nn.Identity) and net.body.conv1.conv.out_channels == 2
    assert net(torch.randn(2, 8, 5, 7)).shape == (2, 8, 5, 7)
    down = ResNetBottleneck(8, 4, 16, stride=2)
    assert down.body.conv2.conv.stride == (2, 2) and down.body.conv1.conv.stride == (1, 1)  # on the 3x3
    assert down.shortcut.conv.stride == (2, 2)
    assert down(torch.randn(2, 8, 6, 6)).shape == (2, 16, 3, 3)


def test_repmlp_bottleneck_is_the_papers_layout():
    """1x1 (C_in -> mid), 3x3 (mid -> mid/r), RepMLP (mid/r), ReLU, 3x3 (mid/r -> mid), 1x1 (mid -> C_out);
    no BN right after the RepMLP block."""
    torch.manual_seed(0)
    net = RepMLPBottleneck(16, 8, 16, 6, 8, 3, 4, r=2, groups=2, fc1_fc2_reduction=2, reparam_conv_k=(1, 3))
    assert list(net.body._modules) == ["reduce1x1", "reduce3x3", "repmlp", "relu", "expand3x3", "expand1x1"]
    assert (net.body.reduce1x1.conv.kernel_size, net.body.reduce1x1.conv.out_channels) == ((1, 1), 8)
    assert (net.body.reduce3x3.conv.kernel_size, net.body.reduce3x3.conv.out_channels) == ((3, 3), 4)
    assert (net.body.expand3x3.conv.kernel_size, net.body.expand3x3.conv.out_channels) == ((3, 3), 8)
    assert isinstance(net.body.expand1x1.act, nn.Identity)  # BN, no ReLU before the shortcut add
    (block,) = _blocks(net)
    assert (block.in_channels, block.out_channels, block.H, block.W, block.h, block.w) == (4, 4, 6, 8, 3, 4)
    assert block.groups == 2 and set(block.local_perceptron) == {"conv1", "conv3"}
    assert block.global_perceptron.fc1.out_features == 4 * 2 * 2 // 2
    out = net(torch.randn(2, 16, 6, 8))
    assert out.shape == (2, 16, 6, 8)
    assert out.min() >= 0  # ends in a ReLU
    assert not isinstance(RepMLPBottleneck(8, 8, 16, 4, 4, 2, 2).shortcut, nn.Identity)  # C_in != C_out


def test_repmlp_light_block_reduces_by_8():
    torch.manual_seed(0)
    net = repmlp_light_block(16, 8, 8, 4, 4, groups=2)
    assert list(net.body._modules) == ["reduce1x1", "repmlp", "relu", "expand1x1"]
    (block,) = _blocks(net)
    assert block.in_channels == block.out_channels == 2 and block.groups == 2
    assert net(torch.randn(2, 16, 8, 8)).shape == (2, 16, 8, 8)


@pytest.mark.parametrize("factory", [small_repmlp_resnet, small_conv_resnet])
@pytest.mark.parametrize("num_classes,in_channels,image_size", [(10, 3, 32), (4, 1, 16)])
def test_small_resnet_output_shapes(factory, num_classes, in_channels, image_size):
    torch.manual_seed(0)
    net = factory(num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=8)
    assert net(torch.randn(2, in_channels, image_size, image_size)).shape == (2, num_classes)


def test_small_repmlp_resnet_partitions():
    """32x32 with h = 8: the 16x16 stage has 2x2 partitions and a global perceptron; the 8x8 stage is one partition."""
    net = small_repmlp_resnet(width=8, h=8)
    first, last = _blocks(net)
    assert (first.H, first.h, first.in_channels) == (16, 8, 4)  # C = 16, mid = 8, r = 2
    assert first.global_perceptron is not None
    assert (last.H, last.h, last.in_channels) == (8, 8, 8)
    assert last.global_perceptron is None
    assert not _blocks(small_conv_resnet(width=8))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: RepMLPBottleneck(8, 6, 8, 8, 8, 4, 4, r=4), r"mid_channels=6 must be divisible by r=4"),
        (lambda: ResNetBottleneck(8, 0, 8), r"mid_channels must be a positive integer"),
        (lambda: small_conv_resnet(width=6), r"width=6 must be divisible by 4"),
        (lambda: small_repmlp_resnet(image_size=30), r"image_size=30 must be divisible by 4"),
        (lambda: small_repmlp_resnet(num_classes=0), r"num_classes must be a positive integer"),
        (lambda: small_conv_resnet(width=0), r"width must be a positive integer"),
        (lambda: small_repmlp_resnet(image_size=24, h=8), r"H=12 must be divisible by h=8"),
        (lambda: small_repmlp_resnet(groups=3), r"in_channels=8 must be divisible by groups=3"),
    ],
)
def test_bad_net_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- merge equivalence after training ------------------------------------------------------

NETS = {
    "bottleneck": (lambda: RepMLPBottleneck(8, 8, 8, 6, 8, 3, 4, r=2, groups=2, fc1_fc2_reduction=2), (3, 8, 6, 8)),
    "bottleneck_no_convs": (lambda: RepMLPBottleneck(4, 4, 8, 4, 4, 2, 2, reparam_conv_k=()), (3, 4, 4, 4)),
    "light_block": (lambda: repmlp_light_block(16, 8, 8, 4, 4, groups=2), (3, 16, 8, 8)),
    "resnet_16px": (lambda: small_repmlp_resnet(num_classes=5, in_channels=1, image_size=16, width=8, h=4, groups=2), (4, 1, 16, 16)),
    "resnet_32px_default": (lambda: small_repmlp_resnet(width=8), (2, 3, 32, 32)),
}


def _trained(train_steps, name: str, seed: int = 0):
    torch.manual_seed(seed)
    factory, shape = NETS[name]
    net = train_steps(factory(), shape, steps=3, lr=0.01, seed=seed)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    # running statistics are not the defaults (some running means stay ~0 by construction: a BN fed by a
    # sum of BN outputs whose betas have barely moved sees zero-mean channels, but its variance moves)
    assert all(bn.num_batches_tracked.item() == 3 for bn in bns)
    assert all((bn.running_var - 1).abs().max() > 1e-3 for bn in bns)
    assert max(bn.running_mean.abs().max().item() for bn in bns) > 1e-2
    return net, shape


@pytest.mark.parametrize("name", list(NETS))
def test_net_merge_is_exact_float64(train_steps, name, assert_equivalent):
    net, shape = _trained(train_steps, name)
    assert check_equivalence(net, shape, dtype=torch.float64, seed=1).max_abs < 1e-10

    original = copy.deepcopy(net).double().eval()
    merged = deploy(original)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, actual = original(x), merged(x)
    assert actual.shape == expected.shape
    assert_equivalent(actual, expected)
    assert expected.abs().max().item() > 1e-3  # not a trivially zero output
    for block in _blocks(merged):
        assert block.deployed and block.fc3.bias is not None
        assert not any(isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)) for m in block.modules())
        if block.global_perceptron is not None:
            assert block.global_perceptron.bn is None
    assert not batchnorms_left(merged)  # conv + BN outside the blocks fused too
    # the original still holds its branches
    assert all(not b.deployed and b.local_perceptron is not None for b in _blocks(net))


@pytest.mark.parametrize("name", ["bottleneck", "light_block", "resnet_16px"])
def test_net_merge_float32(train_steps, max_rel, name):
    net, shape = _trained(train_steps, name, seed=3)
    assert check_equivalence(net, shape, dtype=torch.float32, seed=4).max_rel < 1e-5
    original = copy.deepcopy(net).eval()
    merged = deploy(original)
    x = torch.randn(shape)
    with torch.no_grad():
        assert max_rel(merged(x), original(x)) < 1e-5


def test_merged_net_has_fewer_parameters():
    """Merging drops the conv branches and BNs and adds only FC3 biases; each conv + BN outside the
    blocks trades the BN's weight and bias for one conv bias per channel."""
    net = small_repmlp_resnet(width=8)
    merged = deploy(net)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    removed = sum(
        count(b.local_perceptron) + count(b.fc3_bn) + (count(b.global_perceptron.bn) if b.global_perceptron else 0)
        for b in _blocks(net)
    )
    added = sum(b.fc3.weight.shape[0] for b in _blocks(net))
    inside = {id(m) for b in _blocks(net) for m in b.modules()}
    outside_bn = sum(m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d) and id(m) not in inside)
    assert count(merged) == count(net) - removed + added - outside_bn
