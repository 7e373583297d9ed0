"""reparameterize: one way to say merged (Reparameterizable), the whole-model merge (reparameterize_model,
deploy), and check_equivalence, which measures a merge (and can fail)."""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
from collections.abc import Callable

import pytest
import torch
from torch import nn

import repmlp_lite
from repmlp_lite.block import GlobalPerceptron, RepMLPBlock
from repmlp_lite.layers import ConvBNLayer, LinearBNLayer
from repmlp_lite.paper_speed import ConvFC3Block
from repmlp_lite.precision import Precision, current_precision
from repmlp_lite.reparameterize import (
    Equivalence,
    Reparameterizable,
    batchnorms_left,
    check_equivalence,
    deploy,
    reparameterize_model,
)
from repmlp_lite.repmlpnet import RepMLPNet, RepMLPNetBlock, RepMLPNetUnit, inject_locality, small_repmlpnet
from repmlp_lite.zoo import create_model, list_models

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPE = (3, 2, 8, 8)
TWICE = r"is already merged: switch_to_deploy\(\) was called twice"  # after the class name


def _mixed_model() -> nn.Sequential:
    """Blocks with a conv + BN layer and a plain BN around them, and a nested block."""
    torch.manual_seed(0)
    return nn.Sequential(
        ConvBNLayer(2, 4, 3, act=nn.ReLU()),
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
    # the conv + BN layer outside the blocks is one conv with bias now
    assert merged[0].deployed and merged[0].conv.bias is not None and merged[0].bn is None
    # a BN of the model's own (no part of a re-parameterizable module) is left as it is
    assert isinstance(merged[2], nn.BatchNorm2d)
    assert torch.equal(merged[2].running_mean, trained_model[2].running_mean)
    assert batchnorms_left(merged) == ["2"]
    assert not merged.training and not any(m.training for m in merged.modules())


def test_deploy_is_the_one_walk_on_an_eval_copy(trained_model):
    """deploy(model) is reparameterize_model on a deep copy in eval mode, nothing more: a bare Conv2d +
    BatchNorm2d pair (no re-parameterizable module) is not fused behind the walk's back."""
    by_hand = reparameterize_model(copy.deepcopy(trained_model).eval())
    merged = deploy(trained_model)
    assert merged.state_dict().keys() == by_hand.state_dict().keys()
    assert all(torch.equal(v, by_hand.state_dict()[k]) for k, v in merged.state_dict().items())
    bare = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3))
    assert [type(m) for m in deploy(bare)] == [nn.Conv2d, nn.BatchNorm2d]


def test_deploy_fuses_linear_bn_and_merges_children_first_once_each():
    """switch_to_deploy() merges the subtree children first, then the module's own hook; each module once."""
    calls = []

    class Recorder(Reparameterizable):
        def __init__(self, name, *children):
            super().__init__()
            self.name = name
            self.children_ = nn.ModuleList(children)  # a plain container between the recorders

        def forward(self, x):
            return x

        def _merge_own(self):
            calls.append(self.name)

    torch.manual_seed(0)
    tree = Recorder("outer", Recorder("left", Recorder("leaf")), nn.Sequential(Recorder("right")))
    model = nn.Sequential(LinearBNLayer(3, 4), tree).double()
    model.train()(torch.randn(8, 3, dtype=torch.float64))  # moves the BN statistics
    merged = deploy(model)
    assert calls == ["leaf", "left", "right", "outer"]
    assert all(m.deployed for m in merged.modules() if isinstance(m, Reparameterizable))
    assert not any(m.deployed for m in model.modules() if isinstance(m, Reparameterizable))
    assert merged[0].bn is None and batchnorms_left(merged) == []
    x = torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        assert (merged(x) - model.eval()(x)).abs().max().item() < 1e-12


def test_reparameterize_model_is_in_place_and_skips_nothing():
    """The whole-model routine merges every outermost module of a plain container, in place."""
    model = _mixed_model().eval()
    assert reparameterize_model(model) is model
    flags = [m.deployed for m in model.modules() if isinstance(m, Reparameterizable)]
    assert flags == [True] * 5  # the conv + BN layer, 2 blocks, their 2 global perceptrons
    assert isinstance(model[2], nn.BatchNorm2d)  # a plain BN is no re-parameterizable module: it stays
    with pytest.raises(ValueError, match=f"ConvBNLayer {TWICE}"):
        reparameterize_model(model)


def test_reparameterize_model_of_one_kind_merges_only_that_kind():
    """``kind`` restricts the same walk: here the global perceptrons alone, inside unmerged blocks."""
    model = _mixed_model().eval()
    assert reparameterize_model(model, GlobalPerceptron) is model
    merged = {type(m).__name__: m.deployed for m in model.modules() if isinstance(m, Reparameterizable)}
    assert merged == {"ConvBNLayer": False, "RepMLPBlock": False, "GlobalPerceptron": True}
    gps = [m for m in model.modules() if isinstance(m, GlobalPerceptron)]
    assert len(gps) == 2 and all(gp.deployed and gp.bn is None for gp in gps)


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
    with pytest.raises(ValueError, match=f"ConvBNLayer {TWICE}"):
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
    assert result.precision == Precision("cpu", "float64", False, False)  # where and how both ran
    assert str(check_equivalence(trained_model, SHAPE, dtype=torch.float32).precision) == "float32 on cpu, TF32 off"
    # deterministic for a given seed
    assert check_equivalence(trained_model, SHAPE, dtype=torch.float64, seed=7) == result


def test_merging_and_comparing_run_with_tf32_off(trained_model, monkeypatch):
    """On a GPU, torch's default TF32 convs would round the merged kernels (conv_to_fc convolves an identity)
    and the training form's outputs: the merge and the check turn TF32 off, and put the flags back."""
    seen = []
    original_merged_fc3 = RepMLPBlock.merged_fc3

    def watched(self):
        seen.append(current_precision("cuda", torch.float32))  # what a float32 op on a GPU would get now
        return original_merged_fc3(self)

    monkeypatch.setattr(RepMLPBlock, "merged_fc3", watched)
    assert current_precision("cuda", torch.float32).tf32_convs  # torch's default
    deploy(trained_model)
    check_equivalence(trained_model, SHAPE, dtype=torch.float32)
    assert seen and not any(p.tf32_convs or p.tf32_matmuls for p in seen)
    assert current_precision("cuda", torch.float32).tf32_convs


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


# ---- every re-parameterizable class of the package ----------------------------------------------

# one small instance of each class and its input shape; a class missing here fails the coverage test
FACTORIES: dict[type, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    GlobalPerceptron: (lambda: GlobalPerceptron(4, 2, 2, 4, 4, fc1_fc2_reduction=2), (3, 4, 8, 8)),
    RepMLPBlock: (lambda: RepMLPBlock(4, 6, 8, 8, 4, 4, groups=2, reparam_conv_k=(1, 3)), (3, 4, 8, 8)),
    ConvBNLayer: (lambda: ConvBNLayer(3, 5, 3, stride=2, act=nn.ReLU()), (3, 3, 9, 9)),
    LinearBNLayer: (lambda: LinearBNLayer(6, 5, act=nn.ReLU()), (3, 6)),
    RepMLPNetBlock: (lambda: RepMLPNetBlock(8, 4, 4, num_sharesets=2, reparam_conv_k=(1, 3)), (3, 8, 8, 8)),
    ConvFC3Block: (lambda: ConvFC3Block(8, 4, 4, num_sharesets=2, reparam_conv_k=(1, 3)), (3, 8, 8, 8)),
    RepMLPNetUnit: (lambda: RepMLPNetUnit(8, 4, 4, num_sharesets=4, ffn_expand=2), (3, 8, 8, 8)),
    RepMLPNet: (lambda: small_repmlpnet(num_classes=5, partitions_per_side=2), (3, 1, 32, 32)),
}


def _package_classes() -> list[type]:
    """Every class defined in a module of the package (each module imported)."""
    classes = []
    for info in pkgutil.iter_modules(repmlp_lite.__path__):
        module = importlib.import_module(f"repmlp_lite.{info.name}")
        classes += [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__]
    return classes


def test_the_factories_cover_every_reparameterizable_class_of_the_package():
    found = {c for c in _package_classes() if issubclass(c, Reparameterizable) and not inspect.isabstract(c)}
    assert found == set(FACTORIES), f"without a factory here: {found - set(FACTORIES)}"


def test_only_the_base_class_defines_switch_to_deploy():
    defining = {c.__qualname__ for c in _package_classes() if "switch_to_deploy" in vars(c)}
    assert defining == {"Reparameterizable"}


@pytest.mark.parametrize("cls", list(FACTORIES), ids=lambda c: c.__name__)
def test_every_reparameterizable_class_merges_exactly_once(cls, randomize_bn, max_rel):
    factory, shape = FACTORIES[cls]
    torch.manual_seed(0)
    module = randomize_bn(factory().double(), 1)
    assert type(module) is cls and not module.deployed
    merged = copy.deepcopy(module)
    merged.switch_to_deploy()
    assert merged.deployed and not module.deployed
    assert all(m.deployed for m in merged.modules() if isinstance(m, Reparameterizable))
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, actual = module(x), merged(x)
    assert expected.abs().max() > 1e-3
    assert max_rel(actual, expected) < 1e-10
    with pytest.raises(ValueError, match=f"^{cls.__name__} {TWICE}"):
        merged.switch_to_deploy()


def test_a_merge_that_skips_its_own_hook_is_caught(randomize_bn, max_rel, monkeypatch):
    """The exactness test above can fail: a ConvBNLayer whose BN is dropped, not folded, is off."""
    monkeypatch.setattr(ConvBNLayer, "_merge_own", lambda self: setattr(self, "bn", None))
    module = randomize_bn(ConvBNLayer(3, 5, 3).double(), 1)
    merged = copy.deepcopy(module)
    merged.switch_to_deploy()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert max_rel(merged(x), module(x)) > 1e-3


@pytest.mark.parametrize(
    "name,kwargs", [*((name, {}) for name in list_models()), ("repmlp_pure_mlp_cifar", {"mixer": "fc3_conv9"})]
)
def test_every_zoo_family_deploys_completely(name, kwargs):
    """deploy() and create_model(deploy=True) leave no module unmerged (on the meta device: no memory)."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
        merged, built_merged = deploy(model), create_model(name, deploy=True, **kwargs)
    for net in (merged, built_merged):
        modules = [m for m in net.modules() if isinstance(m, Reparameterizable)]
        assert modules and all(m.deployed for m in modules)
    assert not any(m.deployed for m in model.modules() if isinstance(m, Reparameterizable))


def test_a_net_with_injected_locality_deploys_like_a_fresh_one(randomize_bn, assert_equivalent):
    """Modules merged already (the authors' locality_injection) are skipped by the walk, not merged twice."""
    torch.manual_seed(0)
    net = randomize_bn(small_repmlpnet(num_classes=5).double(), 3)
    injected = inject_locality(copy.deepcopy(net))
    assert not injected.deployed
    assert all(m.deployed for m in injected.modules() if isinstance(m, RepMLPNetBlock))
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert_equivalent(deploy(injected)(x), deploy(net)(x))
        assert_equivalent(deploy(injected)(x), net(x))
