"""layers: the grouped FC, and the conv + BN and FC + BN layers that merge themselves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval

from repmlp_lite.conv_as_fc import fc_forward
from repmlp_lite.layers import ConvBNBranch, GroupedFC, LinearBNLayer
from repmlp_lite.zoo import create_model

pytestmark = pytest.mark.usefixtures("single_thread")

# ---- GroupedFC -----------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_grouped_fc_is_a_grouped_1x1_conv(groups, bias):
    torch.manual_seed(groups)
    fc = GroupedFC(12, 6, groups, bias=bias).double()
    if bias:
        nn.init.normal_(fc.bias)
    assert fc.weight.shape == (6, 12 // groups)
    x = torch.randn(5, 12, dtype=torch.float64)
    expected = F.conv2d(x[:, :, None, None], fc.weight[:, :, None, None], fc.bias, groups=groups)[:, :, 0, 0]
    assert (fc(x) - expected).abs().max().item() < 1e-12
    # and the same as fc_forward with a 1x1 "image"
    assert (fc_forward(x[:, :, None, None], fc.weight, fc.bias, groups=groups)[:, :, 0, 0] - expected).abs().max() < 1e-12


def test_grouped_fc_groups_do_not_mix():
    fc = GroupedFC(4, 4, groups=2).double()
    x = torch.zeros(1, 4, dtype=torch.float64)
    x[0, 0] = 1.0  # a feature of group 0 only
    out = fc(x)
    assert torch.count_nonzero(out[0, 2:]) == 0
    assert torch.equal(out[0, :2], fc.weight[:2, 0])


def test_grouped_fc_rejects_indivisible_features():
    with pytest.raises(ValueError, match=r"in_features=5 must be divisible by groups=2"):
        GroupedFC(5, 4, 2)
    with pytest.raises(ValueError, match=r"out_features=5 must be divisible by groups=2"):
        GroupedFC(4, 5, 2)


# ---- conv + BN, FC + BN ----------------------------------------------------------------------


def test_a_conv_bn_branch_fused_is_its_eval_output(randomize_bn):
    torch.manual_seed(0)
    branch = randomize_bn(ConvBNBranch(4, 6, 3, groups=2).double(), 2)
    kernel, bias = branch.fused()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        expected = branch(x)
    assert (F.conv2d(x, kernel, bias, padding=1, groups=2) - expected).abs().max().item() < 1e-12
    with pytest.raises(ValueError, match=r"reparam_conv_k=4 is even"):
        ConvBNBranch(4, 6, 4)


def test_linear_bn_layer_merges_into_one_fc_as_torch_fuses_it(randomize_bn):
    torch.manual_seed(0)
    layer = randomize_bn(LinearBNLayer(6, 5, act=nn.ReLU()).double(), 3)
    torch_fc = fuse_linear_bn_eval(layer.fc, layer.bn)  # torch's own fold, for comparison
    layer.switch_to_deploy()
    assert layer.bn is None and sorted(layer.state_dict()) == ["fc.bias", "fc.weight"]
    assert (layer.fc.weight - torch_fc.weight).abs().max().item() < 1e-12
    assert (layer.fc.bias - torch_fc.bias).abs().max().item() < 1e-12


def test_the_pure_mlps_head_deploys_with_no_bn_left():
    """The pure MLP's FC(512) + BN head is a LinearBNLayer: deploy folds it like every other BN."""
    with torch.device("meta"):
        model = create_model("repmlp_pure_mlp_cifar")
    head = [m for m in model.modules() if isinstance(m, LinearBNLayer)]
    assert len(head) == 1 and head[0].fc.out_features == 512
    with torch.device("meta"):
        merged = create_model("repmlp_pure_mlp_cifar", deploy=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in merged.modules())
