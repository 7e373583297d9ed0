"""repmlp_lite.diagram: the figures label the block's real sizes, boxes do not overlap, text fits its box."""

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from repmlp_lite import RepMLPBlock, partition  # noqa: E402
from repmlp_lite.diagram import (  # noqa: E402
    block_diagram,
    partition_diagram,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def texts(fig, gid):
    """The strings of every text in ``fig`` whose gid is ``gid``."""
    return [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == gid]


def box_text(fig, gid):
    (text,) = texts(fig, gid)
    return text


def gids(fig):
    return {t.get_gid() for ax in fig.axes for t in ax.texts if t.get_gid()}


BLOCKS = {
    "C4-O8-g2": dict(in_channels=4, out_channels=8, H=12, W=12, h=4, w=4, groups=2),
    "r4-two-branches": dict(in_channels=8, out_channels=8, H=16, W=8, h=8, w=4, fc1_fc2_reduction=4, reparam_conv_k=(3, 7)),
    "single-partition": dict(in_channels=8, out_channels=16, H=8, W=8, h=8, w=8, reparam_conv_k=(1, 3, 5, 7, 9)),
    "no-conv-branch": dict(in_channels=6, out_channels=6, H=6, W=6, h=3, w=3, groups=3, reparam_conv_k=()),
}


def test_fc3_boxes_label_the_blocks_sizes():
    block = RepMLPBlock(**BLOCKS["C4-O8-g2"])  # C*h*w = 64, O*h*w = 128, weight (128, 64/2)
    fig = block_diagram(block)
    train_fc3 = box_text(fig, "train:fc3")
    assert "64" in train_fc3 and "128" in train_fc3 and "g = 2" in train_fc3
    deploy_fc3 = box_text(fig, "deploy:fc3")
    assert "64 → 128" in deploy_fc3
    assert f"weight {tuple(block.fc3.weight.shape)}" == "weight (128, 32)"
    assert "weight (128, 32)" in deploy_fc3


def test_labels_change_with_the_block():
    a = block_diagram(RepMLPBlock(**BLOCKS["C4-O8-g2"]))
    b = block_diagram(RepMLPBlock(**BLOCKS["r4-two-branches"]))
    assert box_text(a, "train:fc3") != box_text(b, "train:fc3")
    # FC1 acts on C * H/h * W/w = 8 * 2 * 2 = 32 pooled features; r = 4 leaves 8 hidden units.
    assert box_text(b, "train:fc1").startswith("FC1: 32 → 8")
    assert box_text(b, "deploy:fc1").endswith("32 → 8")
    assert box_text(b, "train:input").endswith("(N, 8, 16, 8)")
    assert box_text(b, "train:partition").endswith("(N·4, 8, 8, 4)")
    assert box_text(b, "train:output").endswith("(N, 8, 16, 8)")


def test_one_conv_box_per_branch():
    fig = block_diagram(RepMLPBlock(**BLOCKS["r4-two-branches"]))
    conv_gids = {g for g in gids(fig) if g.startswith("train:conv")}
    assert conv_gids == {"train:conv3", "train:conv3_bn", "train:conv7", "train:conv7_bn"}
    assert box_text(fig, "train:conv7").startswith("conv 7×7")
    assert "pad 3" in box_text(fig, "train:conv7")
    assert not any(g.startswith("deploy:conv") or g.endswith("_bn") for g in gids(fig) if g.startswith("deploy"))


def test_single_partition_has_no_global_perceptron():
    fig = block_diagram(RepMLPBlock(**BLOCKS["single-partition"]))
    names = gids(fig)
    assert "train:no_global" in names
    assert not names & {"train:pool", "train:fc1", "train:add", "deploy:fc1", "deploy:add"}


@pytest.mark.parametrize("name", BLOCKS)
def test_boxes_do_not_overlap_and_text_fits(name):
    fig = block_diagram(RepMLPBlock(**BLOCKS[name]))
    renderer = fig.canvas.get_renderer()
    fig_box = fig.bbox
    for ax in fig.axes:
        boxes = {p.get_gid(): p.get_window_extent(renderer) for p in ax.patches if isinstance(p, FancyBboxPatch)}
        assert len(boxes) >= 4
        for (ga, a), (gb, b) in itertools.combinations(boxes.items(), 2):
            assert not a.overlaps(b), f"{ga} overlaps {gb}"
        for text in ax.texts:
            extent = text.get_window_extent(renderer)
            box = boxes[text.get_gid()]
            assert box.x0 < extent.x0 and extent.x1 < box.x1, f"{text.get_gid()} is wider than its box"
            assert box.y0 < extent.y0 and extent.y1 < box.y1, f"{text.get_gid()} is taller than its box"
            assert fig_box.x0 <= box.x0 and box.x1 <= fig_box.x1 and fig_box.y0 <= box.y0 and box.y1 <= fig_box.y1


def test_merged_block_cannot_be_drawn():
    block = RepMLPBlock(**BLOCKS["C4-O8-g2"]).eval()
    block.switch_to_deploy()
    with pytest.raises(ValueError, match="before switch_to_deploy"):
        block_diagram(block)


@pytest.mark.parametrize("H, W, h, w", [(8, 8, 4, 4), (6, 8, 3, 2), (4, 6, 4, 6)])
def test_partition_diagram_tiles_hold_the_partitions_pixels(H, W, h, w):
    fig = partition_diagram(H, W, h, w)
    expected = partition(torch.arange(H * W).reshape(1, 1, H, W), h, w)
    count = (H // h) * (W // w)
    assert expected.shape[0] == count
    assert sorted(int(t) for t in texts(fig, "map")) == list(range(H * W))
    for i in range(count):
        assert texts(fig, f"label:{i}") == [f"[{i}]"]
        assert [int(t) for t in texts(fig, f"tile:{i}")] == expected[i].flatten().tolist()
    assert not texts(fig, f"tile:{count}")


@pytest.mark.parametrize("H, W, h, w", [(8, 8, 3, 4), (8, 6, 4, 4), (8, 8, 0, 4)])
def test_partition_diagram_rejects_bad_sizes(H, W, h, w):
    with pytest.raises(ValueError, match="divisible|positive"):
        partition_diagram(H, W, h, w)
