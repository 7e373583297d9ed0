"""load_official: synthetic checkpoints in the authors' v1 RepMLP-ResNet key layout (written from
their repmlp_resnet.py / repmlp_blocks.py / repmlp.py structure, independently of the converter)."""

from __future__ import annotations

import pytest
import torch

from repmlp_lite import create_model, deploy, load_official

pytestmark = pytest.mark.usefixtures("single_thread")


def _conv_bn(prefix: str, cin: int, cout: int, k: int, deployed: bool, groups: int = 1) -> dict[str, tuple]:
    """Their ConvBN / ConvBNReLU: conv (+ bn), or one conv with bias when deployed."""
    keys = {f"{prefix}.conv.weight": (cout, cin // groups, k, k)}
    if deployed:
        keys[f"{prefix}.conv.bias"] = (cout,)
    else:
        keys |= {f"{prefix}.bn.{n}": (cout,) for n in ("weight", "bias", "running_mean", "running_var")}
        keys[f"{prefix}.bn.num_batches_tracked"] = ()
    return keys


def _bn(prefix: str, n: int) -> dict[str, tuple]:
    return {f"{prefix}.{k}": (n,) for k in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def _repmlp(prefix: str, c: int, size: int, h: int, g: int, ks: tuple, deployed: bool) -> dict[str, tuple]:
    """Their RepMLP(C -> C) with fc1_fc2_reduction = 1."""
    keys: dict[str, tuple] = {}
    parts = (size // h) ** 2
    if parts > 1:
        f = c * parts
        keys |= {f"{prefix}.fc1_fc2.fc1.weight": (f, f), f"{prefix}.fc1_fc2.fc1.bias": (f,),
                 f"{prefix}.fc1_fc2.fc2.weight": (f, f), f"{prefix}.fc1_fc2.fc2.bias": (f,)}
        if not deployed:
            keys |= _bn(f"{prefix}.avg.bn", c)
    n = c * h * h
    keys[f"{prefix}.fc3.weight"] = (n, n // g, 1, 1)
    if deployed:
        keys[f"{prefix}.fc3.bias"] = (n,)
    else:
        keys |= _bn(f"{prefix}.fc3_bn", n)
        for k in ks:
            keys |= _conv_bn(f"{prefix}.repconv{k}", c, c, k, False, g)
    return keys


def authors_layout(block_type: str, g: int, deployed: bool, r=(2, 4), h: int = 7) -> dict[str, tuple]:
    """Key -> shape of their RepMLPResNet(num_blocks=[3,4,6,3], img 224, h=w=7, K=1,3,5)."""
    keys = _conv_bn("stage0.0", 3, 64, 7, deployed)
    cin = 64
    for s, (n, out) in enumerate(zip((3, 4, 6, 3), (256, 512, 1024, 2048)), start=1):
        ratio = 4 * 2 ** (s - 1)
        for i in range(n):
            p, stride = f"stage{s}.{i}", (2 if (i == 0 and s > 1) else 1)
            if stride == 2 or ratio not in (8, 16):
                if stride != 1 or cin != out:
                    keys |= _conv_bn(f"{p}.shortcut", cin, out, 1, deployed)
                mid = out // 4
                keys |= _conv_bn(f"{p}.conv1", cin, mid, 1, deployed)
                keys |= _conv_bn(f"{p}.conv2", mid, mid, 3, deployed)
                keys |= _conv_bn(f"{p}.conv3", mid, out, 1, deployed)
            elif block_type == "light":
                mid = out // 8
                keys |= _conv_bn(f"{p}.light_conv1", cin, mid, 1, deployed)
                keys |= _repmlp(f"{p}.light_repmlp", mid, 224 // ratio, h, g, (1, 3, 5), deployed)
                keys |= _conv_bn(f"{p}.light_conv3", mid, out, 1, deployed)
            else:
                mid = out // 4
                inner = mid // (r[0] if ratio == 8 else r[1])
                keys |= _conv_bn(f"{p}.btnk_conv1", cin, mid, 1, deployed)
                keys |= _conv_bn(f"{p}.btnk_conv2", mid, inner, 3, deployed)
                keys |= _repmlp(f"{p}.btnk_repmlp", inner, 224 // ratio, h, g, (1, 3, 5), deployed)
                keys |= _conv_bn(f"{p}.btnk_conv4", inner, mid, 3, deployed)
                keys |= _conv_bn(f"{p}.btnk_conv5", mid, out, 1, deployed)
            cin = out
    return keys | {"linear.weight": (1000, 2048), "linear.bias": (1000,)}


def synthetic_checkpoint(layout: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values of the right shapes (positive running variances, integer batch counters)."""
    gen = torch.Generator().manual_seed(seed)
    ckpt = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            ckpt[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            ckpt[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            ckpt[key] = torch.randn(shape, generator=gen) * 0.05
    return ckpt


def test_training_checkpoint_of_repmlp_res50_loads_and_lands_in_place():
    ckpt = synthetic_checkpoint(authors_layout("bottleneck", g=8, deployed=False))
    model = load_official(create_model("repmlp_res50_224"), {f"module.{k}": v for k, v in ckpt.items()})
    block = model.c3[1].body.repmlp
    assert torch.equal(block.fc3.weight, ckpt["stage2.1.btnk_repmlp.fc3.weight"].flatten(1))
    assert torch.equal(block.global_perceptron.bn.running_var, ckpt["stage2.1.btnk_repmlp.avg.bn.running_var"])
    assert torch.equal(block.local_perceptron["conv5"].conv.weight, ckpt["stage2.1.btnk_repmlp.repconv5.conv.weight"])
    assert torch.equal(model.c4[2].body.expand3x3.conv.weight, ckpt["stage3.2.btnk_conv4.conv.weight"])
    assert torch.equal(model.c2[0].shortcut.bn.running_mean, ckpt["stage1.0.shortcut.bn.running_mean"])
    assert torch.equal(model.stem[0].conv.weight, ckpt["stage0.0.conv.weight"])
    assert torch.equal(model.fc.bias, ckpt["linear.bias"])


def test_deployed_checkpoint_of_the_released_light_net_loads_into_the_deployed_zoo_model():
    """The authors' released Light net has g = 4 (the paper's text: g = 8)."""
    ckpt = synthetic_checkpoint(authors_layout("light", g=4, deployed=True), seed=1)
    model = load_official(create_model("repmlp_res50_light_224", groups=4, deploy=True), ckpt)
    assert torch.equal(model.c4[1].body.repmlp.fc3.bias, ckpt["stage3.1.light_repmlp.fc3.bias"])
    assert torch.equal(model.c4[1].body.reduce1x1.conv.bias, ckpt["stage3.1.light_conv1.conv.bias"])
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_a_loaded_training_checkpoint_deploys_exactly():
    ckpt = synthetic_checkpoint(authors_layout("light", g=8, deployed=False), seed=3)
    model = load_official(create_model("repmlp_res50_light_224"), ckpt).double().eval()
    merged = deploy(model)
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(x)
        assert ((merged(x) - expected).abs().max() / expected.abs().max()).item() < 1e-10


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: c.pop("stage2.1.btnk_repmlp.fc3_bn.running_mean"),
         r"missing 'c3\.1\.body\.repmlp\.fc3_bn\.running_mean'"),
        (lambda c: c.update({"stage3.1.btnk_conv2.conv.weight": torch.zeros(32, 256, 3, 3)}),
         r"'c4\.1\.body\.reduce3x3\.conv\.weight' has shape \(32, 256, 3, 3\), the model needs \(64, 256, 3, 3\)"),
        (lambda c: c.update({"stage2.1.btnk_repmlp.repconv7.conv.weight": torch.zeros(1)}),
         r"has 'c3\.1\.body\.repmlp\.local_perceptron\.conv7\.conv\.weight', which the model does not have"),
    ],
)
def test_a_mismatched_checkpoint_names_the_first_bad_key(edit, match):
    ckpt = synthetic_checkpoint(authors_layout("bottleneck", g=8, deployed=False))
    edit(ckpt)
    with pytest.raises(ValueError, match=match):
        load_official(create_model("repmlp_res50_224"), ckpt)


def test_a_training_checkpoint_does_not_load_into_the_deployed_model():
    ckpt = synthetic_checkpoint(authors_layout("bottleneck", g=8, deployed=False))
    with pytest.raises(ValueError, match=r"missing 'stem\.0\.conv\.bias'"):
        load_official(create_model("repmlp_res50_224", deploy=True), ckpt)


def test_no_converter_for_a_plain_module():
    with pytest.raises(ValueError, match="no converter for the authors' checkpoints of Linear"):
        load_official(torch.nn.Linear(2, 2), {})
