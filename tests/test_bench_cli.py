"""The benchmark (``python -m repmlp_lite.bench``), the fairness of its references, and the ONNX export."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repmlp_lite.bench import block_configs, measure_block, write_csv
from repmlp_lite.block import RepMLPBlock, partition
from repmlp_lite.block_costs import TIME_CATEGORIES, BareMatmuls, copy_bytes, time_breakdown
from repmlp_lite.export import conv_nodes, export_onnx, merged_small_repmlp_resnet, onnxruntime_fn, round_trip
from repmlp_lite.measure import count_flops
from repmlp_lite.reparameterize import deploy

pytestmark = pytest.mark.usefixtures("single_thread")

RATIO_COLUMNS = {"merged/train", "merged/bare", "merged/conv"}


def _merged_block(train_steps, randomize_bn, seed=0, n=4, **kwargs) -> RepMLPBlock:
    """A block after a few training steps, BN statistics randomized, then merged."""
    torch.manual_seed(seed)
    block = RepMLPBlock(**kwargs)
    train_steps(block, (n, kwargs["in_channels"], kwargs["H"], kwargs["W"]), seed=seed)
    return deploy(randomize_bn(block, seed))


# ---- the command line --------------------------------------------------------------------------


def test_cli_quick_writes_a_csv_with_the_ratio_columns(tmp_path):
    path = tmp_path / "bench.csv"
    command = [sys.executable, "-m", "repmlp_lite.bench", "--quick", "--csv", str(path),
               "--rounds", "1", "--min-run-time", "0.001", "--threads", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    for title in ("## block", "## bottleneck", "## deploy", "## engine", "merged/bare"):
        assert title in result.stdout

    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert RATIO_COLUMNS | {"merged/resnet", "table"} <= set(reader.fieldnames)
        rows = list(reader)
    tables = {row["table"] for row in rows}
    assert tables == {"block", "bottleneck", "deploy", "engine"}
    blocks = [row for row in rows if row["table"] == "block"]
    assert {row["batch"] for row in blocks} == {"1", "32"}
    for row in blocks:
        for column in RATIO_COLUMNS:
            assert float(row[column]) > 0, (column, row)
        assert int(row["flops_merged"]) == int(row["flops_bare"])  # the bare limit does the same work
        assert int(row["params_merged"]) < int(row["params_train"])
    for row in (r for r in rows if r["table"] == "bottleneck"):
        assert float(row["merged/resnet"]) > 0 and float(row["merged/train"]) > 0
    assert any(row["engine"] == "onnxruntime" for row in rows if row["table"] == "engine")


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU here")
def test_cli_device_cuda_without_a_gpu_is_a_clear_error():
    result = subprocess.run(
        [sys.executable, "-m", "repmlp_lite.bench", "--device", "cuda"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr


def test_write_csv_takes_the_union_of_columns(tmp_path):
    path = tmp_path / "t.csv"
    write_csv([{"table": "a", "x": 1}, {"table": "b", "y": 2.5}], path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"table": "a", "x": "1", "y": ""}, {"table": "b", "x": "", "y": "2.5"}]


def test_measure_block_row_is_consistent():
    row = measure_block(channels=8, h=2, groups=2, batch=2, rounds=1, min_run_time=0.001)
    assert RATIO_COLUMNS <= row.keys()
    assert row["fc3_params"] == 8 * 8 * 2**4 // 2  # C*O*h^2*w^2/g
    assert row["one_fc_params"] == 8 * 8 * 4**4  # C*O*H^2*W^2
    assert row["params_merged"] < row["params_train"]
    assert row["flops_merged"] == row["flops_bare"] < row["flops_train"]
    assert all(row[k] > 0 for k in ("train_ms", "merged_ms", "bare_ms", "conv_ms"))


# ---- the bare-matmul limit computes what the merged block computes -----------------------------------

BLOCKS = {
    "g1": dict(in_channels=4, out_channels=4, H=8, W=8, h=4, w=4, groups=1, fc1_fc2_reduction=2),
    "g4": dict(in_channels=8, out_channels=8, H=8, W=8, h=4, w=4, groups=4, fc1_fc2_reduction=2),
    "g2_C!=O_nonsquare": dict(in_channels=4, out_channels=6, H=6, W=8, h=3, w=4, groups=2, fc1_fc2_reduction=4),
    "single_partition": dict(in_channels=4, out_channels=4, H=4, W=4, h=4, w=4, groups=2),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_bare_matmuls_compute_the_merged_block(name, train_steps, randomize_bn):
    kwargs = BLOCKS[name]
    block = _merged_block(train_steps, randomize_bn, **kwargs).double()
    x = torch.randn(3, kwargs["in_channels"], kwargs["H"], kwargs["W"], dtype=torch.float64)
    bare = BareMatmuls(block, x)
    fc2_product, fc3_product = bare()

    g, c, h, w = kwargs["groups"], kwargs["in_channels"], kwargs["h"], kwargs["w"]
    m = 3 * (kwargs["H"] // h) * (kwargs["W"] // w)
    assert bare.fc3_input.shape == (g, m, c * h * w // g) and bare.fc3_input.is_contiguous()
    assert bare.fc3_weight.is_contiguous()
    with torch.no_grad():
        expected = block(x)
    torch.testing.assert_close(bare.block_output(fc3_product), expected, rtol=1e-12, atol=1e-12)

    gp = block.global_perceptron
    if gp is None:
        assert fc2_product is None
        return
    # FC1's operand is the pooled input itself (the global perceptron's BN now lives in FC1) ...
    torch.testing.assert_close(bare.fc1_input, F.avg_pool2d(x, (h, w)).flatten(1))
    # ... and the two products are FC1 and FC2 without their biases and the ReLU between them
    with torch.no_grad():
        torch.testing.assert_close(fc2_product, gp.fc2(gp.fc1(bare.fc1_input) - gp.fc1.bias) - gp.fc2.bias)


def test_bare_matmuls_need_a_merged_block():
    with pytest.raises(ValueError, match="merged"):
        BareMatmuls(RepMLPBlock(4, 4, 8, 8, 4, 4), torch.randn(1, 4, 8, 8))


# ---- FLOPs: FlopCounterMode against the formula -------------------------------------------------------


@pytest.mark.parametrize("name", list(BLOCKS))
@pytest.mark.parametrize("n", [1, 5])
def test_merged_block_flops_match_the_formula(name, n):
    kwargs = BLOCKS[name]
    block = deploy(RepMLPBlock(**kwargs))
    c, o, height, width, h, w, g = (kwargs[k] for k in ("in_channels", "out_channels", "H", "W", "h", "w", "groups"))
    parts = (height // h) * (width // w)
    m = n * parts
    expected = 2 * m * (c * h * w) * (o * h * w) // g  # FC3
    if block.global_perceptron is not None:  # FC1: C*P -> C*P/fc1_fc2_reduction, FC2: back
        hidden = c * parts // kwargs["fc1_fc2_reduction"]
        expected += 2 * 2 * n * (c * parts) * hidden
    x = torch.randn(n, c, height, width)
    assert count_flops(block, x) == expected
    assert BareMatmuls(block, x).flops() == expected


# ---- ONNX ---------------------------------------------------------------------------------------------


def test_onnx_round_trip_of_the_merged_small_repmlp_resnet(tmp_path):
    model = merged_small_repmlp_resnet(width=8)
    x = torch.randn(3, 3, 32, 32)  # exported with batch 1: the batch dimension is dynamic
    result = round_trip(model, x, tmp_path / "net.onnx")
    assert result.max_abs_diff < 1e-4
    with torch.no_grad():  # the file written is the model too
        assert abs(onnxruntime_fn(tmp_path / "net.onnx")(x) - model(x).numpy()).max() < 1e-4
    # no Conv inside the RepMLP blocks; every other conv of the net (stem, 1x1s, 3x3s) is one Conv node
    assert result.convs.in_blocks == 0
    assert result.convs.total == sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 0
    assert result.ops.get("Gemm", 0) + result.ops.get("MatMul", 0) >= 2


def test_exported_merged_block_has_no_conv_but_the_training_form_has(train_steps, randomize_bn):
    kwargs = BLOCKS["g4"]
    merged = _merged_block(train_steps, randomize_bn, **kwargs).eval()
    x = torch.randn(2, 8, 8, 8)
    buffer = io.BytesIO()
    data = export_onnx(merged, x[:1], buffer)
    assert buffer.getvalue() == data
    assert conv_nodes(data).total == 0
    with torch.no_grad():
        assert abs(onnxruntime_fn(data)(x) - merged(x).numpy()).max() < 1e-4

    train = RepMLPBlock(**kwargs).eval()  # the check can fail: the unmerged block exports its conv branches
    counts = conv_nodes(export_onnx(train, x[:1]))
    assert counts.total == len(kwargs.get("reparam_conv_k", (1, 3, 5)))
    assert counts.in_blocks == counts.total


# ---- the limit in three layouts, the copies, the time breakdown -----------------------------------------


@pytest.mark.parametrize("name", ["g4", "g2_C!=O_nonsquare"])
def test_bare_matmul_layouts_compute_the_same_products(name, train_steps, randomize_bn):
    kwargs = BLOCKS[name]
    block = _merged_block(train_steps, randomize_bn, **kwargs).double()
    bare = BareMatmuls(block, torch.randn(3, kwargs["in_channels"], kwargs["H"], kwargs["W"], dtype=torch.float64))
    assert set(bare.layouts()) == {"transposed", "as stored", "weight left"}
    assert bare.fc3_weight_stored.data_ptr() == block.fc3.weight.data_ptr()  # a view, not a copy
    (fc2_t, fc3_t), (fc2_s, fc3_s), (fc2_l, fc3_l) = bare(), bare.as_stored(), bare.weight_left()
    torch.testing.assert_close(fc3_s, fc3_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fc2_s, fc2_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fc3_l.transpose(1, 2), fc3_t, rtol=1e-12, atol=1e-12)  # W @ X^T = (X @ W^T)^T
    torch.testing.assert_close(fc2_l.t(), fc2_t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["g4", "single_partition"])
def test_bare_copies_are_the_merged_forwards_copies(name, train_steps, randomize_bn):
    """The copy floor times the copy in and the copy out of the merged forward: the same bytes."""
    kwargs = BLOCKS[name]
    block = _merged_block(train_steps, randomize_bn, **kwargs).double()
    x = torch.randn(3, kwargs["in_channels"], kwargs["H"], kwargs["W"], dtype=torch.float64)
    bare = BareMatmuls(block, x)
    parts, out = bare.copies(x)
    g, c, h, w = kwargs["groups"], kwargs["in_channels"], kwargs["h"], kwargs["w"]
    assert parts.shape == (g, bare.fc3_input.shape[1], c // g, h * w)
    assert out.shape == (3, kwargs["out_channels"], kwargs["H"], kwargs["W"]) and out.is_contiguous()
    with torch.no_grad():  # the product put back is the block's output less its bias
        bias_map = block.fc3.bias.view(-1, h, w).repeat(1, kwargs["H"] // h, kwargs["W"] // w)
        torch.testing.assert_close(out, block(x) - bias_map)
    m = parts.shape[1]  # group j: channels j*C/g ... of every partition, without the correction v
    torch.testing.assert_close(parts, partition(x, h, w).reshape(m, g, c // g, h * w).transpose(0, 1), rtol=0, atol=0)
    # the merged forward copies exactly these bytes, plus the global perceptron's add and vectors
    assert 0 < copy_bytes(bare.copies, x) <= copy_bytes(block, x)


def test_copy_bytes_counts_the_copies_not_the_products():
    x = torch.randn(4, 8, 8, 8)
    assert copy_bytes(lambda t: t.clone(), x) == 8 * 8 * 8 * 4  # one copy of an image per image
    assert copy_bytes(lambda t: t.view(4, -1), x) == 0  # a view moves nothing
    weight = torch.ones(512, 3)
    assert copy_bytes(lambda t: t.reshape(4, -1) @ weight, x) == 0  # a product is not a copy
    merged = deploy(RepMLPBlock(8, 8, 8, 8, 4, 4, groups=2, global_perceptron=False))
    image = 8 * 8 * 8 * 4
    assert copy_bytes(merged, x) == 2 * image  # one copy in, one copy out
    assert copy_bytes(merged.reference_forward, x) > 2 * image  # the readable path copies more
    one_part = deploy(RepMLPBlock(8, 8, 4, 4, 4, 4, groups=2))
    small = torch.randn(4, 8, 4, 4)
    assert copy_bytes(one_part, small) == 8 * 4 * 4 * 4  # one partition: no copy in, only the groups out
    assert copy_bytes(one_part, small[:1]) == 0  # one image of one partition: no copy at all
    assert copy_bytes(deploy(RepMLPBlock(8, 8, 4, 4, 4, 4, groups=1)), small) == 0  # nor with g = 1


def test_time_breakdown_splits_a_merged_block():
    merged = deploy(RepMLPBlock(8, 8, 8, 8, 4, 4, groups=2, fc1_fc2_reduction=2)).eval()
    ms = time_breakdown(merged, torch.randn(4, 8, 8, 8), iters=3)
    assert set(ms) == set(TIME_CATEGORIES.values()) | {"other", "total"}
    for category in ("FC3 product", "FC1, FC2 products", "copies in and out", "pool, ReLU, add v"):
        assert ms[category] > 0, category
    assert sum(v for k, v in ms.items() if k != "total") <= ms["total"] * 1.5


def test_block_configs_cover_the_sweep():
    configs = block_configs()
    assert {c["h"] for c in configs} == {7, 8, 10}
    assert {c["parts"] ** 2 for c in configs} == {1, 4, 9, 16}
    assert {c["channels"] for c in configs} == {64, 128, 256, 512}
    assert {c["groups"] for c in configs} == {1, 2, 4, 8}
    assert {c["batch"] for c in configs} == {1, 8, 32}
    for c in configs:
        fc3 = c["channels"] ** 2 * c["h"] ** 4 // c["groups"]
        assert fc3 <= 2**25 or (c["channels"], c["h"], c["groups"]) == (512, 7, 8)


def test_measure_block_without_baselines():
    row = measure_block(channels=8, h=2, groups=2, batch=2, parts=3, rounds=1, min_run_time=0.001, baselines=False)
    assert "merged/train" not in row and "train_ms" not in row
    assert row["P"] == 9 and row["H"] == 6
    assert row["bare_layout"] in {"transposed", "as stored", "weight left"}
    assert row["bare_ms"] > 0 and row["merged/bare"] > 0
    assert row["copies_ms"] > 0 and row["floor/bare"] > 1
    assert row["copies"] >= row["io_bytes"] > 0


def test_copy_bytes_of_the_readable_forward_counts_each_copy_once():
    """The readable (training-form) path on merged weights: partition, x + v, the group transpose
    after FC3, unpartition: 4 images, plus the global perceptron's small vectors."""
    merged = deploy(RepMLPBlock(8, 8, 8, 8, 4, 4, groups=2, fc1_fc2_reduction=2))
    x = torch.randn(4, 8, 8, 8)
    image = 8 * 8 * 8 * 4
    assert 4 * image <= copy_bytes(merged.reference_forward, x) < 4.5 * image
    assert 3 * image <= copy_bytes(merged, x) < 3.5 * image  # copy in, add v in place, copy out
