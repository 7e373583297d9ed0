"""RepMLPNet: the block against a direct reference, Locality Injection exact after training, the
authors' partition order, errors, the zoo's published counts, and load_official."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from repmlp_lite import create_model, deploy, list_models, load_official
from repmlp_lite.measure import count_flops, count_parameters
from repmlp_lite.repmlpnet import (
    RepMLPNet,
    RepMLPNetBlock,
    fc3_forward,
    inject_locality,
    repmlpnet,
    small_repmlpnet,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _random_block(c=8, h=3, w=2, sets=2, ks=(1, 3), seed=0, dtype=torch.float64) -> RepMLPNetBlock:
    torch.manual_seed(seed)
    return RepMLPNetBlock(c, h, w, sets, ks).to(dtype)


# ---- the block against a direct reference ------------------------------------------------------


def test_identity_fc3_and_constant_gate_return_the_input_times_the_gate():
    """FC3 = identity, BN = identity, no conv, gate = sigmoid(b): out = x * sigmoid(b), for many partitions."""
    block = _random_block(c=6, h=2, w=2, sets=2, ks=())
    with torch.no_grad():
        block.fc3_weight.copy_(torch.eye(4).repeat(2, 1))
        block.fc3_bn.running_var.fill_(1 - block.fc3_bn.eps)  # BN = identity (torch 2.11 refuses eps = 0)
        block.gate.fc2.weight.zero_()
        block.gate.fc2.bias.fill_(0.7)
    block.eval()
    x = torch.randn(2, 6, 6, 4, dtype=torch.float64)  # 3 x 2 partitions, 3 channels per set
    assert torch.allclose(block(x), x * torch.sigmoid(torch.tensor(0.7, dtype=torch.float64)), atol=1e-14)


def test_block_equals_a_loop_over_channels_and_partitions(randomize_bn):
    """Channel c uses set c % S's FC and conv kernels on each of its own partitions."""
    block = _random_block(c=6, h=2, w=3, sets=3, ks=(1, 3)).eval()
    randomize_bn(block)
    x = torch.randn(2, 6, 4, 6, dtype=torch.float64)
    gate = block.gate(x)
    expected = torch.zeros_like(x)
    from repmlp_lite.fusion import bn_scale_shift

    scale, shift = bn_scale_shift(block.fc3_bn)
    for c in range(6):
        s = c % 3
        fc = block.fc3_weight[s * 6:(s + 1) * 6]  # (hw, hw)
        for i in range(2):
            for j in range(2):
                patch = x[:, c, i * 2:(i + 1) * 2, j * 3:(j + 1) * 3]  # (N, 2, 3)
                out = (patch.reshape(2, 6) @ fc.t()) * scale[s] + shift[s]
                for branch in block.local_perceptron.values():
                    out = out + branch(patch[:, None].expand(2, 3, 2, 3).contiguous())[:, s].reshape(2, 6)
                expected[:, c, i * 2:(i + 1) * 2, j * 3:(j + 1) * 3] = out.reshape(2, 2, 3)
    assert torch.allclose(block(x), expected * gate, atol=1e-12)


@pytest.mark.parametrize("sets", [1, 3])
def test_fc3_as_grouped_conv_equals_batched_matmul(sets):
    rows = torch.randn(5, sets * 6, dtype=torch.float64)
    weight = torch.randn(sets * 6, 6, dtype=torch.float64)
    bias = torch.randn(sets * 6, dtype=torch.float64)
    as_conv = fc3_forward(rows, weight, bias, sets, "conv")
    assert torch.allclose(as_conv, fc3_forward(rows, weight, bias, sets), atol=1e-12)
    with pytest.raises(ValueError, match="impl must be"):
        fc3_forward(rows, weight, bias, sets, "fft")  # type: ignore[arg-type]


# ---- Locality Injection: exact after training ------------------------------------------------------


@pytest.mark.parametrize("partitions_per_side", [1, 2])
@pytest.mark.parametrize("c,h,sets,ks", [(8, 4, 4, (1, 3, 5)), (256, 7, 128, (1, 3))])  # toy; B224's last stage
def test_block_merge_exact_after_training(partitions_per_side, c, h, sets, ks, train_steps, randomize_bn, max_rel):
    block = _random_block(c=c, h=h, w=h, sets=sets, ks=ks)
    size = h * partitions_per_side
    train_steps(block, (3, c, size, size), dtype=torch.float64)
    randomize_bn(block)
    block.eval()
    x = torch.randn(3, c, size, size, dtype=torch.float64)
    merged = copy.deepcopy(block)
    merged.switch_to_deploy()
    assert merged.fc3_bn is None and merged.local_perceptron is None and merged.fc3_bias is not None
    assert max_rel(merged(x), block(x)) < 1e-10


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_net_deploy_exact_at_two_resolutions(dtype, tol, train_steps, randomize_bn, max_rel):
    torch.manual_seed(0)
    net = small_repmlpnet(num_classes=10, in_channels=1, image_size=32)
    train_steps(net, (4, 1, 32, 32), dtype=dtype)
    randomize_bn(net)
    net.eval()
    merged = deploy(net)
    assert not any(isinstance(m, RepMLPNetBlock) and not m.deployed for m in merged.modules())
    # only the units' prebn1 is left (FC3 shares its weights across a set's channels)
    bns = [name for name, m in merged.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(name.endswith("prebn1") for name in bns)
    for size in (32, 64):  # one, then four partitions per stage: the same weights
        x = torch.randn(3, 1, size, size, dtype=dtype)
        assert max_rel(merged(x), net(x)) < tol


def test_merging_twice_raises():
    net = small_repmlpnet()
    merged = deploy(net)
    with pytest.raises(ValueError, match="RepMLPNet is already merged"):
        deploy(merged)
    for m in merged.modules():
        if hasattr(m, "switch_to_deploy"):
            with pytest.raises(ValueError, match=rf"{type(m).__name__} is already merged: .* called twice"):
                m.switch_to_deploy()
    with pytest.raises(ValueError, match="RepMLPNetBlock is already merged: its conv branches"):
        merged.stages[0][0].block.merged_fc3()


# ---- the authors' partition order --------------------------------------------------------------


def _authors_order(block: RepMLPNetBlock, x: torch.Tensor) -> torch.Tensor:
    """The authors' RepMLPBlock.forward (repmlpnet.py) on our block's weights, reshape for reshape."""
    n, c, height, width = x.shape
    h, w, sets = block.h, block.w, block.sets
    hp, wp = height // h, width // w
    parts = x.reshape(n, c, hp, h, wp, w).permute(0, 2, 4, 1, 3, 5)  # (N, hp, wp, C, h, w)
    out = fc3_forward(parts.reshape(-1, sets * h * w), block.fc3_weight, None, sets, "conv")
    out = block.fc3_bn(out.reshape(-1, sets, h, w)).reshape(-1, hp, wp, sets, h, w)
    conv_in = parts.reshape(-1, sets, h, w)
    for branch in block.local_perceptron.values():
        out = out + branch(conv_in).reshape(-1, hp, wp, sets, h, w)
    return out.permute(0, 3, 1, 4, 2, 5).reshape(n, c, height, width) * block.gate(x)



def test_authors_order_agrees_with_one_partition_or_one_channel_per_set():
    for c, sets, size in [(8, 4, 4), (4, 4, 8)]:  # one partition; C/S = 1 with four partitions
        block = _random_block(c=c, h=4, w=4, sets=sets).eval()
        x = torch.randn(2, c, size, size, dtype=torch.float64)
        assert torch.allclose(_authors_order(block, x), block(x), atol=1e-12)


def test_authors_order_shuffles_partitions_between_channels():
    """With 4 partitions and 2 channels per set, their reading order moves partitions across channels."""
    block = _random_block(c=4, h=2, w=2, sets=2, ks=()).eval()
    with torch.no_grad():
        block.fc3_weight.copy_(torch.eye(4).repeat(2, 1))
        block.fc3_bn.running_var.fill_(1 - block.fc3_bn.eps)  # BN = identity, with torch's eps
        block.gate.fc2.weight.zero_()
        block.gate.fc2.bias.fill_(20.0)  # gate = 1 to 1e-9
    x = torch.arange(1 * 4 * 4 * 4, dtype=torch.float64).reshape(1, 4, 4, 4)
    theirs = _authors_order(block, x)
    assert torch.allclose(block(x), x, atol=1e-6)
    assert not torch.allclose(theirs, x, atol=1e-3)
    # what they compute: row r of (N*P*C/S) rows, written as (n, partition, k), read back as (n, k, partition)
    per_set = 4 // 2
    parts = x.reshape(1, 4, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5)  # (N, hp, wp, C, h, w)
    rows = parts.reshape(1, 4, per_set, 2, 2, 2)  # (N, P, C/S, S, h, w)
    reread = rows.reshape(1, per_set, 2, 2, 2, 2, 2)  # read as (N, C/S, hp, wp, S, h, w)
    expected = reread.permute(0, 1, 4, 2, 5, 3, 6).reshape(1, 4, 4, 4)
    assert torch.allclose(theirs, expected, atol=1e-6)


# ---- errors --------------------------------------------------------------------------------------


def test_errors_name_the_parameter_and_rule():
    with pytest.raises(ValueError, match="channels=6 must be divisible by num_sharesets S=4"):
        RepMLPNetBlock(6, 2, 2, 4)
    block = RepMLPNetBlock(4, 3, 3, 2)
    with pytest.raises(ValueError, match="input height H=4 must be divisible by partition height h=3"):
        block(torch.randn(1, 4, 4, 3))
    with pytest.raises(ValueError, match="input width W=4 must be divisible by partition width w=3"):
        block(torch.randn(1, 4, 3, 4))
    with pytest.raises(ValueError, match="input has 5 channels"):
        block(torch.randn(1, 5, 3, 3))
    with pytest.raises(ValueError, match="repeats a kernel size"):
        RepMLPNetBlock(4, 3, 3, 2, (3, 3))
    with pytest.raises(ValueError, match="hs has 1 entries"):
        RepMLPNet((8, 16), (4,), (4, 2), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="arch must be one of"):
        repmlpnet("x", 224)


# ---- the zoo and the published counts ------------------------------------------------------------

# The authors' README: params and GFLOPs as printed (it does not say how it counted; matched here by
# training-form parameters and deployed multiply-adds)
PUBLISHED = {"repmlpnet_t224": (38.3, 2.8, 224), "repmlpnet_b224": (68.2, 6.7, 224)}


def test_zoo_names():
    assert list_models("repmlpnet_*") == [
        "repmlpnet_b224", "repmlpnet_b256", "repmlpnet_d256", "repmlpnet_l256", "repmlpnet_t224", "repmlpnet_t256",
    ]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_params_and_flops(name):
    params_m, gflops, res = PUBLISHED[name]
    with torch.device("meta"):
        model = create_model(name)
        params = count_parameters(model)
        flops = count_flops(deploy(model), torch.empty(1, 3, res, res)) / 2
    assert f"{params / 1e6:.1f}" == f"{params_m:.1f}"
    assert f"{flops / 1e9:.1f}" == f"{gflops:.1f}"


# ---- load_official ----------------------------------------------------------------------------------


def _bn(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (n,) for k in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def _authors_keys(channels, hs, num_blocks, sharesets, ks, num_classes, in_channels, injected):
    """Key names and shapes of the authors' RepMLPNet (repmlpnet.py: RepMLPNet, RepMLPNetUnit,
    RepMLPBlock, GlobalPerceptron, FFNBlock, conv_bn; patch 4, gp reduce 4, ffn expand 4),
    written out from reading their code, independently of our converter."""
    keys = {"conv_embedding.conv.weight": (channels[0], in_channels, 4, 4), **_bn("conv_embedding.bn", channels[0])}
    for i, (c, h, blocks, s) in enumerate(zip(channels, hs, num_blocks, sharesets)):
        for j in range(blocks):
            p = f"stages.{i}.{j}"
            rb = f"{p}.repmlp_block"
            keys |= {
                f"{rb}.gp.fc1.weight": (c // 4, c, 1, 1), f"{rb}.gp.fc1.bias": (c // 4,),
                f"{rb}.gp.fc2.weight": (c, c // 4, 1, 1), f"{rb}.gp.fc2.bias": (c,),
                f"{rb}.fc3.weight": (s * h * h, h * h, 1, 1),
            }
            if injected:
                keys[f"{rb}.fc3.bias"] = (s * h * h,)
            else:
                keys |= _bn(f"{rb}.fc3_bn", s)
                for k in ks:
                    keys |= {f"{rb}.repconv{k}.conv.weight": (s, 1, k, k), **_bn(f"{rb}.repconv{k}.bn", s)}
            keys |= {
                f"{p}.ffn_block.ffn_fc1.conv.weight": (4 * c, c, 1, 1), **_bn(f"{p}.ffn_block.ffn_fc1.bn", 4 * c),
                f"{p}.ffn_block.ffn_fc2.conv.weight": (c, 4 * c, 1, 1), **_bn(f"{p}.ffn_block.ffn_fc2.bn", c),
                **_bn(f"{p}.prebn1", c), **_bn(f"{p}.prebn2", c),
            }
        if i + 1 < len(channels):
            keys |= {f"embeds.{i}.conv.weight": (channels[i + 1], c, 2, 2), **_bn(f"embeds.{i}.bn", channels[i + 1])}
    keys |= {**_bn("head_norm", channels[-1]), "head.weight": (num_classes, channels[-1]), "head.bias": (num_classes,)}
    return keys


def _official_checkpoint(injected: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """A synthetic checkpoint of the small net below in the authors' names and shapes (random values)."""
    gen = torch.Generator().manual_seed(seed)
    keys = _authors_keys((8, 16), (8, 4), (1, 1), (2, 4), (1, 3), 5, 3, injected)
    return {
        k: torch.randint(0, 100, shape, generator=gen) if k.endswith("num_batches_tracked")
        else torch.randn(shape, generator=gen)
        for k, shape in keys.items()
    }


@pytest.mark.parametrize("injected", [False, True])
def test_load_official(injected):
    model = small_repmlpnet(num_classes=5, in_channels=3, channels=(8, 16), sharesets=(2, 4))
    if injected:
        inject_locality(model)
    ckpt = _official_checkpoint(injected)
    # spot-check the authors' names and layouts
    assert ckpt["stages.0.0.repmlp_block.fc3.weight"].shape == (2 * 64, 64, 1, 1)
    assert ("stages.1.0.repmlp_block.repconv3.conv.weight" in ckpt) != injected
    assert ("stages.1.0.repmlp_block.fc3.bias" in ckpt) == injected
    load_official(model, ckpt)
    assert torch.equal(model.stages[0][0].block.fc3_weight, ckpt["stages.0.0.repmlp_block.fc3.weight"].flatten(1))
    assert torch.equal(model.embedding.conv.weight, ckpt["conv_embedding.conv.weight"])
    assert torch.equal(model.stages[1][0].ffn.fc2.bn.running_var, ckpt["stages.1.0.ffn_block.ffn_fc2.bn.running_var"])
    assert torch.equal(model.downsamples[0].bn.bias, ckpt["embeds.0.bn.bias"])
    bad = dict(ckpt)
    bad.pop("head.weight")
    with pytest.raises(ValueError, match="missing 'head.weight'"):
        load_official(model, bad)


# ---- figure, ablation, data ---------------------------------------------------------------------


def test_block_diagram_fits_the_column_and_names_every_branch():
    import matplotlib

    matplotlib.use("Agg")
    from repmlp_lite.diagram import repmlpnet_block_diagram
    from repmlp_lite.style import COLUMN_WIDTH_IN

    block = RepMLPNetBlock(32, 8, 8, 4, (1, 3))
    fig = repmlpnet_block_diagram(block, 16, 16)
    assert fig.get_figwidth() <= COLUMN_WIDTH_IN
    texts = {t.get_gid(): t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"net:fc3", "net:conv1", "net:conv3", "net:multiply", "netdeploy:fc3"} <= set(texts)
    assert "(N·4·8, S=4, 8, 8)" in texts["net:partition"]
    assert "net:conv1" not in {t.get_gid() for t in fig.axes[1].texts}
    block.switch_to_deploy()
    with pytest.raises(ValueError, match="before switch_to_deploy"):
        repmlpnet_block_diagram(block, 16, 16)
    with pytest.raises(ValueError, match="H=12 must be divisible by h=8"):
        repmlpnet_block_diagram(RepMLPNetBlock(32, 8, 8, 4), 12, 16)


def test_digits_on_canvas():
    from repmlp_lite.data import load_digits_on_canvas

    data = load_digits_on_canvas(canvas_size=20, digit_size=8, train_size=100)
    x, _ = data.train.tensors
    assert x.shape == (100, 1, 20, 20) and len(data.test) == int(1797 * 0.25)
    ink = x > x.min()  # the empty canvas is one value (0, standardised), ink lies above it
    assert not ink[:, :, :1, :1].all()
    tops = ink.any(dim=3)[:, 0].float().argmax(dim=1)  # first row with ink, per image
    lefts = ink.any(dim=2)[:, 0].float().argmax(dim=1)
    assert len(set(tops.tolist())) > 3 and len(set(lefts.tolist())) > 3  # digits sit at different places
    assert int(ink.any(dim=3).sum(dim=2).max()) <= 8  # each digit spans at most digit_size rows
    with pytest.raises(ValueError, match="digit_size=30 must be at most canvas_size=20"):
        load_digits_on_canvas(canvas_size=20, digit_size=30)


def test_locality_ablation_runs_and_merges():
    from repmlp_lite import ablation

    settings = ablation.AblationSettings(seeds=(0, 1), epochs=1, train_size=64)
    results = ablation.locality_ablation(settings)
    assert len(results) == 4 and results["same_predictions"].all()
    summary = ablation.summarize(results)
    assert list(summary["count"]) == [2, 2]
    assert ablation.ablation_settings(full=True).train_size is None
    assert len(ablation.ablation_settings(full=True).seeds) >= 5
    assert len(ablation.ablation_settings(full=False).seeds) >= 5


def test_count_table_matches_the_readme_for_t224_and_b224():
    from repmlp_lite.paper_speed import repmlpnet_count_table

    rows = {row["model"]: row for row in repmlpnet_count_table()}
    assert len(rows) == 6
    for name in ("repmlpnet_t224", "repmlpnet_b224"):
        assert rows[name]["params_match"] and rows[name]["macs_match"]


def test_seeds_won_pairs_runs_by_seed():
    import pandas as pd

    from repmlp_lite import ablation

    with_conv, without = ablation.VARIANTS
    results = pd.DataFrame({
        "variant": [with_conv] * 3 + [without] * 3,
        "seed": [0, 1, 2, 2, 1, 0],
        "test_accuracy": [0.5, 0.4, 0.9, 0.8, 0.45, 0.1],
    })
    assert ablation.seeds_won(results) == 2  # seed 0: 0.5 > 0.1, seed 1: 0.4 < 0.45, seed 2: 0.9 > 0.8
