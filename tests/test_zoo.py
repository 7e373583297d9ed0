"""zoo: every published params/FLOPs figure of the paper's Tables 1, 2, 3, 4, 7, recounted on the
deployed net (meta device), and create_model / deploy round trips on full-size nets."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from repmlp_lite import create_model, deploy, list_models
from repmlp_lite.block import RepMLPBlock
from repmlp_lite.measure import randomize_bn
from repmlp_lite.nets import RepMLPBottleneck, RepMLPLightBlock, ResNetBottleneck
from repmlp_lite.reparameterize import batchnorms_left
from repmlp_lite.tables import ROWS, recount, truncated
from repmlp_lite.zoo import model_keywords, register_model

pytestmark = pytest.mark.usefixtures("single_thread")

ZOO = [
    "resnet50_224", "resnet101_224", "resnet50_320", "resnet101_320", "repmlp_res50_224",
    "repmlp_res50_g8_16_320", "repmlp_res50_g8_8_320", "repmlp_res50_g4_8_320", "repmlp_res50_light_224",
    "repmlp_pure_mlp_cifar", "wide_convnet_cifar", "repmlp_resnet",
]


def test_the_zoo_has_the_papers_models():
    assert set(ZOO) <= set(list_models())
    assert list_models("repmlp_res50_*_320") == [
        "repmlp_res50_g4_8_320", "repmlp_res50_g8_16_320", "repmlp_res50_g8_8_320"
    ]


@pytest.mark.parametrize("row", ROWS, ids=[f"T{r.table}-{r.row}" for r in ROWS])
def test_published_figures_recounted(row):
    params, flops = recount(row)
    assert truncated(params, row.params) == row.params, f"params {params:.4f}M"
    if row.flops is not None:
        assert truncated(flops, row.flops) == row.flops, f"FLOPs {flops:.4f}M"


def test_truncated_truncates():
    assert truncated(3890.71, "4089") == "3890"
    assert truncated(44.4965, "44.49") == "44.49"  # rounding would print 44.50
    assert truncated(0.4865, "0.48") == "0.48"


def test_repmlp_res50_layout():
    """c3 and c4: the stride-2 first block stays a ResNet bottleneck, the rest are RepMLP bottlenecks
    with r = 2 (c3: 128 -> 64 channels) and r = 4 (c4: 256 -> 64), h = w = 7, g = 8."""
    with torch.device("meta"):
        net = create_model("repmlp_res50_224")
    assert [type(b) for b in net.c3] == [ResNetBottleneck] + [RepMLPBottleneck] * 3
    assert [type(b) for b in net.c4] == [ResNetBottleneck] + [RepMLPBottleneck] * 5
    assert all(type(b) is ResNetBottleneck for b in [*net.c2, *net.c5])
    c3, c4 = net.c3[1].body.repmlp, net.c4[1].body.repmlp
    assert (c3.in_channels, c3.H, c3.h, c3.groups) == (64, 28, 7, 8)
    assert (c4.in_channels, c4.H, c4.h, c4.groups) == (64, 14, 7, 8)
    assert c3.global_perceptron.fc1.out_features == 64 * 16  # FC1 reduction 1
    light = create_model("repmlp_res50_light_224", num_classes=10)
    assert [type(b) for b in light.c3[1:]] == [RepMLPLightBlock] * 3
    assert light.c4[1].body.repmlp.in_channels == 1024 // 8 and light.fc.out_features == 10


def test_table3_c2_uses_repmlp_in_its_first_block_too():
    """c2's first block has stride 1: as the paper's Sec. 3.5 (only stride-2 blocks stay ResNet
    bottlenecks) and the authors' code have it, it is a RepMLP bottleneck (1x1 conv shortcut, 64 -> 256)."""
    with torch.device("meta"):
        net = create_model("repmlp_resnet", repmlp_stages=("c2",), r=2)
    assert [type(b) for b in net.c2] == [RepMLPBottleneck] * 3
    assert not isinstance(net.c2[0].shortcut, nn.Identity)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"depth": 34}, r"depth must be one of \[50, 101\]"),
        ({"repmlp_stages": ("c6",)}, r"repmlp_stages must be among"),
        ({"block": "heavy"}, r"block must be 'bottleneck' or 'light'"),
        ({"repmlp_stages": ("c3", "c4"), "r": {"c3": 2}}, r"r has no value for stage 'c4'"),
        ({"image_size": 200}, r"image_size=200 must be divisible by 32"),
        ({"repmlp_stages": ("c3",), "h": 8}, r"H=28 must be divisible by h=8"),
    ],
)
def test_bad_builder_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match), torch.device("meta"):
        create_model("repmlp_resnet", **kwargs)


def test_unknown_model_name_raises():
    with pytest.raises(ValueError, match="unknown model name 'resnet18'"):
        create_model("resnet18")


def test_builders_name_every_argument_they_take():
    """A builder's signature is what it accepts (the training command builds from it): no ``**kwargs``."""
    assert model_keywords("repmlpnet_b224") == ("num_classes", "in_channels", "reparam_conv_k")
    assert all(model_keywords(name)[0] == "num_classes" for name in list_models())
    with pytest.raises(ValueError, match=r"model 'resnet50_224' takes no argument 'width'; it takes num_classes$"):
        create_model("resnet50_224", width=8)
    with pytest.raises(ValueError, match=r"the builder of 'x' must name every argument it takes"):
        register_model("x")(lambda num_classes=10, **kwargs: nn.Identity())
    assert "x" not in list_models()


def _random_trained(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(create_model(name), seed).eval()


@pytest.mark.parametrize("name,size", [("repmlp_res50_224", 224), ("repmlp_pure_mlp_cifar", 32)])
def test_deploy_full_size_net_is_exact_and_bn_free(name, size):
    model = _random_trained(name).double()
    merged = deploy(model)
    assert not batchnorms_left(merged) and batchnorms_left(model)
    assert all(b.deployed for b in merged.modules() if isinstance(b, RepMLPBlock))
    assert not any(isinstance(m, nn.Conv2d) and m.bias is None for m in merged.modules())
    x = torch.randn(1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = model(x), merged(x)
    assert expected.abs().max() > 1e-3
    assert ((actual - expected).abs().max() / expected.abs().max()).item() < 1e-10


@pytest.mark.parametrize("name", ["repmlp_res50_light_224", "repmlp_pure_mlp_cifar"])
def test_deployed_state_dict_round_trip(name):
    """torch.save(deploy(m).state_dict()) loads strictly into create_model(name, deploy=True)."""
    model = _random_trained(name, seed=2)
    buffer = io.BytesIO()
    torch.save(deploy(model).state_dict(), buffer)
    buffer.seek(0)
    inference = create_model(name, deploy=True)
    inference.load_state_dict(torch.load(buffer), strict=True)
    assert not inference.training and not batchnorms_left(inference)
    size = 32 if "cifar" in name else 224
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, actual = model(x), inference(x)
    assert ((actual - expected).abs().max() / expected.abs().max()).item() < 1e-5


@pytest.mark.parametrize("mixer", ["fc3_conv9", "conv9", "conv3"])
def test_table1_variants_deploy_exactly(mixer):
    torch.manual_seed(0)
    model = randomize_bn(create_model("repmlp_pure_mlp_cifar", mixer=mixer), 1).double().eval()
    merged = deploy(model)
    assert not batchnorms_left(merged)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, actual = model(x), merged(x)
    assert ((actual - expected).abs().max() / expected.abs().max()).item() < 1e-10
    with pytest.raises(ValueError, match=r"switch_to_deploy\(\) was called twice"):
        deploy(merged)


def test_pure_mlp_bad_arguments_raise():
    with pytest.raises(ValueError, match="mixer must be one of"):
        create_model("repmlp_pure_mlp_cifar", mixer="attention")
    with pytest.raises(ValueError, match="channels must give the three stages' widths"):
        create_model("repmlp_pure_mlp_cifar", channels=(16, 32))


def test_every_zoo_name_is_a_decorated_function_of_that_name():
    """timm's style: ``@register_model("x")`` right above ``def x(``, so grep finds every name's builder."""
    source = "\n".join(p.read_text() for p in (Path(__file__).parents[1] / "repmlp_lite").glob("*.py"))
    pairs = re.findall(r'^@register_model\("(\w+)"\)\ndef (\w+)\(', source, flags=re.M)
    assert all(name == function for name, function in pairs), [p for p in pairs if p[0] != p[1]]
    assert sorted(name for name, _ in pairs) == list_models()
