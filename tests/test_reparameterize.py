"""deploy: a merged deep copy of any model; check_equivalence measures it (and can fail)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from repmlp_lite.block import RepMLPBlock
from repmlp_lite.deploy import Equivalence, batchnorms_left, check_equivalence, deploy

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPE = (3, 2, 8, 8)


def _mixed_model() -> nn.Sequential:
    """Blocks with conv + BN around them (those must survive deploy) and a nested block."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        RepMLPBlock(4, 4, 8, 8, 4, 4, groups=2),
        nn.BatchNorm2d(4),
        nn.Sequential(nn.ReLU(), RepMLPBlock(4, 6, 8, 8, 2, 4, reparam_conv_k=(3,))),
    )


@pytest.fixture
def trained_model(train_steps):
    return train_steps(_mixed_model(), SHAPE, steps=4, seed=1)


def test_deploy_merges_every_block_and_fuses_conv_bn(trained_model):
    merged = deploy(trained_model)
    blocks = [m for m in merged.modules() if isinstance(m, RepMLPBlock)]
    assert len(blocks) == 2 and all(b.deployed for b in blocks)
    for b in blocks:
        assert not any(isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)) for m in b.modules())
        assert b.fc3.bias is not None
    # the conv + BN pair outside the blocks is one conv with bias now; its BN an Identity
    assert isinstance(merged[0], nn.Conv2d) and merged[0].bias is not None
    assert isinstance(merged[1], nn.Identity)
    # a BN that follows no conv or FC (here: a RepMLP block) is left as it is
    assert isinstance(merged[4], nn.BatchNorm2d)
    assert torch.equal(merged[4].running_mean, trained_model[4].running_mean)
    assert batchnorms_left(merged) == ["4"]
    assert not merged.training and not any(m.training for m in merged.modules())


def test_deploy_fuses_linear_bn_and_calls_only_the_outermost_switch():
    """A module with switch_to_deploy() merges its own insides: the nested one is not called again."""
    calls = []

    class Inner(nn.Module):
        def switch_to_deploy(self):
            calls.append("inner")

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return x

        def switch_to_deploy(self):
            calls.append("outer")
            self.inner.switch_to_deploy()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), Outer()).double()
    model.train()(torch.randn(8, 3, dtype=torch.float64))  # moves the BN statistics
    merged = deploy(model)
    assert calls == ["outer", "inner"]
    assert isinstance(merged[1], nn.Identity) and merged[0].bias is not None
    x = torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        assert (merged(x) - model.eval()(x)).abs().max().item() < 1e-12


def test_deploy_is_exact_on_a_mixed_model(trained_model, assert_equivalent):
    original = copy.deepcopy(trained_model).double().eval()
    merged = deploy(original)
    x = torch.randn(SHAPE, dtype=torch.float64)
    with torch.no_grad():
        assert_equivalent(merged(x), original(x))
    assert check_equivalence(trained_model, SHAPE).max_abs < 1e-10
    assert check_equivalence(trained_model, SHAPE, dtype=torch.float32).max_rel < 1e-5


def test_deploy_leaves_the_original_untouched(trained_model):
    assert trained_model.training
    state = copy.deepcopy(trained_model.state_dict())
    x = torch.randn(SHAPE)
    trained_model.eval()
    with torch.no_grad():
        before = trained_model(x)
    trained_model.train()

    merged = deploy(trained_model)
    assert merged is not trained_model
    assert trained_model.training  # the mode is not changed either
    blocks = [m for m in trained_model.modules() if isinstance(m, RepMLPBlock)]
    assert all(not b.deployed and b.fc3_bn is not None and b.local_perceptron is not None for b in blocks)
    assert all(b.global_perceptron.bn is not None for b in blocks)
    assert state.keys() == trained_model.state_dict().keys()
    assert all(torch.equal(v, state[k]) for k, v in trained_model.state_dict().items())
    trained_model.eval()
    with torch.no_grad():
        assert torch.equal(trained_model(x), before)


def test_deploy_of_a_deployed_model_raises(trained_model):
    merged = deploy(trained_model)
    with pytest.raises(ValueError, match=r"switch_to_deploy\(\) was called twice"):
        deploy(merged)


def test_deploy_without_blocks_is_an_eval_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
    merged = deploy(model)
    assert merged is not model and not merged.training and model.training
    assert torch.equal(merged[0].weight, model[0].weight)
    assert merged[0].weight.data_ptr() != model[0].weight.data_ptr()


def test_check_equivalence_does_not_touch_the_model(trained_model):
    state = copy.deepcopy(trained_model.state_dict())
    result = check_equivalence(trained_model, SHAPE, dtype=torch.float64)
    assert isinstance(result, Equivalence)
    assert next(trained_model.parameters()).dtype == torch.float32  # the copy was cast, not the model
    assert trained_model.training
    assert all(torch.equal(v, state[k]) for k, v in trained_model.state_dict().items())


def test_check_equivalence_matches_a_direct_comparison(trained_model):
    result = check_equivalence(trained_model, SHAPE, dtype=torch.float64, seed=7)
    original = copy.deepcopy(trained_model).double().eval()
    merged = deploy(original)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        expected, actual = original(x), merged(x)
    max_abs = (actual - expected).abs().max().item()
    assert result.max_abs == pytest.approx(max_abs, abs=1e-15)
    assert result.max_rel == pytest.approx(max_abs / expected.abs().max().item(), abs=1e-15)
    # deterministic for a given seed
    assert check_equivalence(trained_model, SHAPE, dtype=torch.float64, seed=7) == result


def test_check_equivalence_detects_a_wrong_merge(trained_model, monkeypatch):
    """A merge that is 1% off in FC3 is caught: check_equivalence is not vacuous."""
    original_merged_fc3 = RepMLPBlock.merged_fc3

    def broken(self):
        weight, bias = original_merged_fc3(self)
        return weight * 1.01, bias

    monkeypatch.setattr(RepMLPBlock, "merged_fc3", broken)
    result = check_equivalence(trained_model, SHAPE)
    assert result.max_abs > 1e-4
    assert result.max_rel > 1e-5
