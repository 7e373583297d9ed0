"""bench --paper: the speed-claim table, the profile and the GPU table's precision modes (on stand-in nets
and on the CPU: the full-size ones are timed by the CLI and chapter 6b, not by unit tests)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from repmlp_lite import bench, create_model, deploy, paper_speed
from repmlp_lite.precision import Precision, current_precision
from repmlp_lite.repmlpnet import RepMLPNetBlock

pytestmark = pytest.mark.usefixtures("single_thread")


def _stand_ins() -> dict[str, nn.Module]:
    """Cheap nets under the zoo names: a wider conv is slower, so the ratios have a known direction."""
    torch.manual_seed(0)
    widths = {"resnet50_224": 4, "resnet101_224": 8, "repmlp_res50_224": 4, "repmlp_res50_light_224": 1}
    return {name: nn.Conv2d(3, w, 3, stride=4).eval() for name, w in widths.items()}


def test_speed_table_rows_ratios_and_targets():
    rows = paper_speed.speed_table(batches=(1, 8), rounds=2, min_run_time=0.01, threads=1, nets=_stand_ins())
    assert len(rows) == 2 * len(paper_speed.CLAIMS)
    light = next(r for r in rows if r["net"] == "repmlp_res50_light_224" and r["batch"] == 8)
    assert light["paper"] == pytest.approx(1074 / 689)
    assert light["measured"] > 0 and light["net_ms"] > 0 and light["baseline_ms"] > 0
    assert light["target"] == 1.10 and light["met"] == (light["measured"] >= 1.10)
    assert all(r["target"] is None and r["met"] is None for r in rows if r["batch"] == 1)
    res101 = next(r for r in rows if r["baseline"] == "resnet101_224" and r["batch"] == 8)
    assert res101["paper"] == pytest.approx(636 / 421)  # the paper: 1.51x ResNet-101


def test_profile_table_ranks_ops_by_self_time():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    rows = paper_speed.profile_table(net, batch=1, top=3, threads=1)
    assert 1 <= len(rows) <= 3
    assert [r["self_ms"] for r in rows] == sorted((r["self_ms"] for r in rows), reverse=True)
    assert all(0 <= r["share"] <= 1 for r in rows) and sum(r["share"] for r in rows) <= 1 + 1e-9


def test_cli_paper_prints_the_table_and_profiles_a_missed_target(monkeypatch, capsys, tmp_path):
    nets = _stand_ins()
    nets["repmlp_res50_light_224"] = nn.Conv2d(3, 64, 3).eval()  # far slower than "resnet50": target missed
    monkeypatch.setattr(paper_speed, "deployed_nets", lambda: nets)
    rows = bench.main(["--paper", "--quick", "--rounds", "1", "--min-run-time", "0.01", "--threads", "1",
                       "--csv", str(tmp_path / "paper.csv")])
    out = capsys.readouterr().out
    assert "## paper" in out and "measured" in out
    assert {r["batch"] for r in rows} == {8}
    assert "## where repmlp_res50_light_224 spends its time" in out
    assert (tmp_path / "paper.csv").read_text().startswith("table,net,baseline")


def test_with_conv_fc3_runs_fc3_as_a_conv_with_the_same_numbers(monkeypatch, randomize_bn):
    """RepMLPNet's FC3 as the authors' grouped 1x1 conv, for timing: a copy whose blocks call the conv path."""
    torch.manual_seed(0)
    net = deploy(randomize_bn(create_model("small_repmlpnet", num_classes=5).double(), 1))
    as_conv = paper_speed.with_conv_fc3(net)
    blocks = [m for m in as_conv.modules() if isinstance(m, RepMLPNetBlock)]
    assert blocks and all(type(b) is paper_speed.ConvFC3Block for b in blocks)
    assert not any(type(m) is paper_speed.ConvFC3Block for m in net.modules())  # the original is untouched
    impls = []

    def recording(*args):
        impls.append(args[-1])
        return fc3_forward(*args)

    fc3_forward = paper_speed.fc3_forward
    monkeypatch.setattr(paper_speed, "fc3_forward", recording)
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert (as_conv(x) - net(x)).abs().max().item() < 1e-12
    assert impls == ["conv"] * len(blocks)


class _Watched(nn.Module):
    """A stand-in net that notes, on each call, its output's dtype, whether its input is channels_last,
    and what TF32 a float32 op on a GPU would get right then."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=4)
        self.seen: set[tuple[torch.dtype, bool, Precision]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        self.seen.add(
            (out.dtype, x.is_contiguous(memory_format=torch.channels_last), current_precision("cuda", torch.float32))
        )
        return out


def test_gpu_speed_table_times_each_mode_as_it_says():
    """The GPU table's modes, run here on the CPU: each runs in its dtype, layout and TF32 flags."""
    torch.manual_seed(0)
    nets = {name: _Watched(w).eval() for name, w in zip(paper_speed.NETS, (4, 8, 4, 1))}
    rows = paper_speed.gpu_speed_table(nets, "cpu", batch=2, rounds=1, min_run_time=0.01)
    assert [(r["mode"], r["net"], r["baseline"]) for r in rows] == [
        (mode, net, baseline) for mode in paper_speed.GPU_MODES for net, baseline, _ in paper_speed.CLAIMS
    ]
    for row in rows:
        assert row["measured"] > 0 and row["batch"] == 2 and row["precision"] == paper_speed.GPU_MODES[row["mode"]]
        assert row["net_images_per_s"] == pytest.approx(2 / row["net_ms"] * 1e3)
    light = rows[0]
    assert light["paper"] == pytest.approx(1074 / 689)
    f32, bf16 = torch.float32, torch.bfloat16
    assert nets["resnet50_224"].seen == {
        (f32, False, Precision("cuda", "float32", False, False)),  # fp32: TF32 off, as on a GTX 1080Ti
        (f32, False, Precision("cuda", "float32", True, False)),  # torch's default flags
        (f32, False, Precision("cuda", "float32", True, True)),  # TF32
        (bf16, True, Precision("cuda", "float32", True, False)),  # bf16 autocast, channels_last
    }
    assert current_precision("cuda", torch.float32) == Precision("cuda", "float32", True, False)  # restored


def test_cli_paper_on_a_gpu_times_batch_128_in_each_mode(monkeypatch, capsys):
    """``--paper --device cuda`` takes the GPU table at the paper's batch (faked onto the CPU here)."""
    calls, real_table = [], paper_speed.gpu_speed_table

    def on_the_cpu(nets, device, batch, rounds, min_run_time):
        calls.append((device, batch))
        return real_table(_stand_ins(), "cpu", 2, 1, 0.01, ("fp32",))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "a GPU")
    monkeypatch.setattr(paper_speed, "deployed_nets", _stand_ins)
    monkeypatch.setattr(paper_speed, "gpu_speed_table", on_the_cpu)
    rows = bench.main(["--paper", "--device", "cuda", "--rounds", "1"])
    assert calls == [("cuda", 128)] and len(rows) == len(paper_speed.CLAIMS)
    out = capsys.readouterr().out
    assert "## paper_gpu" in out and "net_images_per_s" in out and "GTX 1080Ti, batch 128" in out
