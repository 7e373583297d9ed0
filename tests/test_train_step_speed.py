"""``python -m repmlp_lite.bench --train-step`` on a tiny setting, the reference formulation it times against,
its bad input, and the training command's --compile and --channels-last."""

from __future__ import annotations

import csv
import json
import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

from repmlp_lite import create_model
from repmlp_lite import train as train_command
from repmlp_lite.bench import main
from repmlp_lite.fast_training import PartitionBatchNorm1d, PartitionBatchNorm2d, PartitionConv2d
from repmlp_lite.train_step_speed import image_size, reference_form, short_name, train_step

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--train-step", "--models", "small_repmlpnet", "--batch", "4", "--rounds", "1", "--min-run-time", "0.01"]


def test_train_step_prints_and_writes_both_forms_and_their_profiles(capsys, tmp_path):
    rows = main([*TINY, "--top", "3", "--csv", str(tmp_path / "step.csv")])
    printed = capsys.readouterr().out
    assert "## train_step" in printed and "## step_profile small_repmlpnet" in printed
    (step,) = [r for r in rows if r["table"] == "train_step"]
    assert step["model"] == "small_repmlpnet" and step["batch"] == 4 and step["precision"] == "fp32"
    assert step["reference_img_s"] > 0 and step["fast_img_s"] > 0 and step["fast/reference"] > 0
    assert step["fast_img_s"] == pytest.approx(4e3 / step["fast_ms"])
    profile = [r for r in rows if r["table"] == "step_profile"]
    assert [(r["form"], r["rank"]) for r in profile] == [(f, k) for f in ("reference", "fast") for k in (1, 2, 3)]
    for form in ("reference", "fast"):
        shares = [r["share"] for r in profile if r["form"] == form]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    assert all(r["calls"] >= 1 and r["self_ms"] > 0 and "::" not in r["op"] for r in profile)
    with open(tmp_path / "step.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows) == 7


def test_compile_and_channels_last_reach_the_fast_form(monkeypatch, capsys):
    """The reference formulation runs as the training command ran it before these options."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, mode: compiled.append((model, mode)) or model)
    (row,) = main([*TINY, "--top", "0", "--compile", "--channels-last"])
    ((model, mode),) = compiled
    assert mode == "default" and row["compile"] == "default" and row["channels_last"] is True
    assert not any("forward" in vars(m) for m in model.modules())  # the fast form, not the reference
    assert model.embedding.conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("options, message", [
    (["--models", "resnet7"], "--models: unknown name 'resnet7'"),
    (["--batch", "0"], "--batch must be a positive integer, got 0"),
    (["--precision", "fp16"], "--precision fp16 needs a GPU"),
])
def test_bad_train_step_input_is_one_line(capsys, options, message):
    with pytest.raises(SystemExit) as exc:
        main([*TINY, *options])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_reference_form_runs_the_torch_layers_on_a_copy():
    model = create_model("small_repmlpnet")
    ref = reference_form(model)
    bases = {PartitionBatchNorm1d: nn.BatchNorm1d, PartitionBatchNorm2d: nn.BatchNorm2d, PartitionConv2d: nn.Conv2d}
    patched = [m for m in ref.modules() if type(m) in bases]
    assert len(patched) == 2 * (1 + 2 * 2)  # two blocks, each: FC3's BN, two conv branches with their BN
    assert all(m.forward.__func__ is bases[type(m)].forward for m in patched)
    assert not any("forward" in vars(m) for m in model.modules())
    for (key, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), key


def test_train_step_takes_one_optimiser_step():
    torch.manual_seed(0)
    model = create_model("small_repmlpnet")
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]))()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert model.stages[0][0].block.fc3_bn.num_batches_tracked.item() == 1
    with pytest.raises(ValueError, match="precision must be one of"):
        train_step(model, torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]), "fp8")


def test_names():
    assert short_name("void at::native::batch_norm_collect_statistics_kernel<at::native::InvStd, float, float, "
                      "float, int>(at::GenericPackedTensorAccessor<float, 3ul>, float)") == (
        "batch_norm_collect_statistics_kernel")
    assert short_name("aten::convolution_backward") == "convolution_backward"
    assert short_name("Memcpy HtoD (Pageable -> Device)") == "Memcpy HtoD"
    assert image_size("repmlpnet_t224") == 224 and image_size("repmlp_pure_mlp_cifar") == 32


def test_training_command_compiles_and_goes_channels_last(monkeypatch, tmp_path):
    """--channels-last converts the model before training, --compile wraps it with its mode; the run trains,
    deploys and checks as without them."""
    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, mode: modes.append(mode) or model)
    final = train_command.main([
        "--model", "small_repmlpnet", "--data", "digits", "--image-size", "16", "--limit-train", "32",
        "--batch-size", "16", "--epochs", "1", "--out", str(tmp_path), "--channels-last",
        "--compile", "max-autotune-no-cudagraphs",
    ])
    assert modes == ["max-autotune-no-cudagraphs"]
    assert final["agreement"] == 1.0 and final["max_rel_logit_diff"] < 1e-4
    saved = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    assert saved["embedding.conv.weight"].is_contiguous(memory_format=torch.channels_last)


def test_gpu_script_runs_its_steps_tiny_on_the_cpu(monkeypatch, tmp_path, capsys):
    """results/train_step_gpu.py --tiny: the GPU measurement's settings (eager with profiles, compiled, zoo)
    on small nets; its files and summary."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, mode: compiled.append(mode) or model)
    script = runpy.run_path(str(ROOT / "results" / "train_step_gpu.py"))
    script["main"]([str(tmp_path), "--tiny", "--rounds", "1", "--min-run-time", "0.01"])
    assert compiled == ["default"]
    with open(tmp_path / "train_step.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["setting"], r["model"], r["precision"], r["compile"]) for r in rows] == [
        ("target", "small_repmlpnet", "bf16", ""), ("target", "small_repmlpnet", "fp32", ""),
        ("compiled", "small_repmlpnet", "bf16", "default"), ("zoo", "small_repmlp_resnet", "bf16", ""),
    ]
    with open(tmp_path / "kernels.csv") as f:
        assert {(r["precision"], r["form"]) for r in csv.DictReader(f)} == {
            (p, f) for p in ("bf16", "fp32") for f in ("reference", "fast")}
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["skipped"] == env["failed"] == [] and env["date"]
    summary = (tmp_path / "summary.md").read_text()
    assert "## Targets" in summary and "## Top kernels: small_repmlpnet, bf16" in summary
    assert summary in capsys.readouterr().out
