"""summary.layer_table: one narrow row per layer with parameters (and per pooling layer)."""

from __future__ import annotations

from repmlp_lite import deploy
from repmlp_lite.nets import RepMLPBottleneck
from repmlp_lite.summary import layer_table


def test_layer_table_of_a_repmlp_bottleneck_before_and_after_deploy():
    net = RepMLPBottleneck(16, 8, 16, 8, 8, 4, 4, r=2, groups=2, reparam_conv_k=(3,))
    rows = layer_table(net)
    by_name = {row["name"]: row for row in rows}
    assert by_name["body.reduce3x3.conv"]["shape"] == "8 -> 4, 3x3"
    assert by_name["body.repmlp.fc3"]["shape"] == "64 -> 64, g=2"
    assert by_name["body.repmlp.local_perceptron.conv3.conv"]["shape"] == "4 -> 4, 3x3, g=2"
    assert by_name["body.repmlp.global_perceptron.pool"]["params"] == 0
    # the fast training form's layers are named by the torch.nn layer whose numbers they compute
    assert by_name["body.repmlp.fc3_bn"]["layer"] == "BatchNorm1d"
    assert by_name["body.repmlp.local_perceptron.conv3.conv"]["layer"] == "Conv2d"
    assert by_name["body.repmlp.local_perceptron.conv3.bn"]["layer"] == "BatchNorm2d"
    assert sum(row["params"] for row in rows) == sum(p.numel() for p in net.parameters())
    assert all(len(row["name"]) + len(row["shape"]) < 60 for row in rows)  # narrow enough for the column
    merged = {row["name"]: row for row in layer_table(deploy(net))}
    assert merged["body.repmlp.fc3"]["bias"] == "yes" and merged["body.reduce3x3.conv"]["bias"] == "yes"
    assert not any(row["layer"].startswith("BatchNorm") for row in merged.values())
