"""bench: parameter count, FLOP count (FlopCounterMode) and latency of the existing helpers."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from repmlp_lite.block import RepMLPBlock
from repmlp_lite.measure import count_flops, count_parameters, latency_ms
from repmlp_lite.reparameterize import deploy

pytestmark = pytest.mark.usefixtures("single_thread")


def test_count_parameters():
    assert count_parameters(nn.Linear(7, 5)) == 7 * 5 + 5
    assert count_parameters(nn.Linear(7, 5, bias=False)) == 35
    # BN: weight and bias are parameters, running statistics are buffers and not counted
    assert count_parameters(nn.BatchNorm2d(6)) == 12
    assert count_parameters(nn.Sequential(nn.Conv2d(4, 8, 3, groups=2, bias=False), nn.ReLU())) == 8 * 2 * 9


def test_count_parameters_of_a_block_and_its_merge():
    c, o, h, w, g = 4, 6, 4, 4, 2
    block = RepMLPBlock(c, o, 8, 8, h, w, groups=g, reparam_conv_k=(1, 3), global_perceptron=False)
    fc3 = o * h * w * c * h * w // g
    bn1d = 2 * o * h * w
    convs = o * (c // g) * (1 + 9) + 2 * 2 * o
    assert count_parameters(block) == fc3 + bn1d + convs
    assert count_parameters(deploy(block)) == fc3 + o * h * w  # FC3 weight and its new bias


@pytest.mark.parametrize("n,fin,fout", [(1, 3, 2), (4, 7, 5), (16, 32, 10)])
@pytest.mark.parametrize("bias", [True, False])
def test_count_flops_of_a_linear(n, fin, fout, bias):
    assert count_flops(nn.Linear(fin, fout, bias=bias), torch.randn(n, fin)) == 2 * n * fin * fout


def test_count_flops_of_a_conv_and_free_elementwise_ops():
    n, c, o, k, g, size = 2, 4, 6, 3, 2, 5
    conv = nn.Conv2d(c, o, k, padding=1, groups=g, bias=False)
    x = torch.randn(n, c, size, size)
    expected = 2 * n * o * size * size * (c // g) * k * k
    assert count_flops(conv, x) == expected
    model = nn.Sequential(conv, nn.BatchNorm2d(o), nn.ReLU()).eval()
    assert count_flops(model, x) == expected  # BN in eval and ReLU count as 0


def test_count_flops_does_not_track_gradients():
    fc = nn.Linear(3, 2)
    count_flops(fc, torch.randn(4, 3, requires_grad=True))
    assert fc.weight.grad is None


def test_latency_ms_measures_wall_time():
    def sleepy(x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.004)
        return x

    ms = latency_ms(sleepy, torch.zeros(1), min_run_time=0.05)
    assert math.isfinite(ms)
    assert 4.0 <= ms < 1000.0


def test_latency_ms_of_a_module_is_positive():
    model = nn.Linear(8, 8).eval()
    ms = latency_ms(model, torch.randn(2, 8), min_run_time=0.02)
    assert 0.0 < ms < 1000.0


def test_net_vs_layers_times_the_chain_and_its_parts():
    from repmlp_lite.bench import net_vs_layers
    from repmlp_lite.nets import small_repmlp_resnet

    torch.manual_seed(0)
    net = deploy(small_repmlp_resnet(width=8).eval())
    x = torch.randn(2, 3, 32, 32)
    row = net_vs_layers(net, x, rounds=1, min_run_time=0.01)
    assert list(row["layer_ms"]) == [name for name, _ in net.named_children()]
    assert row["layers_ms"] == pytest.approx(sum(row["layer_ms"].values()))
    assert row["net_ms"] > 0 and all(ms > 0 for ms in row["layer_ms"].values())
    assert row["net/layers"] == pytest.approx(row["net_ms"] / row["layers_ms"])  # one round: one ratio


def test_net_vs_layers_rejects_a_model_that_is_not_a_chain():
    from repmlp_lite.bench import net_vs_layers

    class Skip(nn.Module):  # children (one Linear) do not make the forward: x + fc(x)
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.fc(x)

    with pytest.raises(ValueError, match="model: its top-level layers"):
        net_vs_layers(Skip(), torch.randn(2, 4), rounds=1, min_run_time=0.01)
    flatten_inside = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(8, 2))  # needs a flatten the chain lacks
    flatten_inside.forward = lambda x: flatten_inside[1](flatten_inside[0](x).flatten(1))
    with pytest.raises(ValueError, match="layer '1' failed"):
        net_vs_layers(flatten_inside, torch.randn(2, 1, 4, 4), rounds=1, min_run_time=0.01)
