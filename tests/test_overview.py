"""repmlp_lite.overview: the opening figure's boxes fit, its identity trick is computed, the committed PNG is current."""

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402
from PIL import Image  # noqa: E402

from repmlp_lite import conv_to_fc  # noqa: E402
from repmlp_lite.overview import overview_diagram, save_overview  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


OVERVIEW_PNG = Path(__file__).resolve().parents[1] / "book" / "figures" / "overview.png"


def test_overview_boxes_do_not_overlap_and_text_fits():
    fig = overview_diagram()
    renderer = fig.canvas.get_renderer()
    boxes = {
        p.get_gid(): p.get_window_extent(renderer)
        for ax in fig.axes for p in ax.patches if isinstance(p, FancyBboxPatch)
    }
    assert {"overview:train:fc3", "overview:train:conv3", "overview:deploy:fc3"} <= set(boxes)
    assert not any(g.startswith("overview:deploy:conv") for g in boxes), "no conv is left at inference"
    for (ga, a), (gb, b) in itertools.combinations(boxes.items(), 2):
        assert not a.overlaps(b), f"{ga} overlaps {gb}"
    for ax in fig.axes:
        for text in ax.texts:
            if text.get_gid() in boxes:
                extent, box = text.get_window_extent(renderer), boxes[text.get_gid()]
                assert box.x0 < extent.x0 and extent.x1 < box.x1, f"{text.get_gid()} is wider than its box"
                assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, f"{text.get_gid()} leaves the figure"


def test_overview_draws_the_fc_kernel_of_the_conv_it_names():
    """Panel (b) is computed: its lower matrix is conv_to_fc of the 1..9 kernel, which is the conv
    applied to the identity's one-hot images, reshaped."""
    fig = overview_diagram()
    insets = [child for ax in fig.axes for child in ax.child_axes if child.images]
    identity, fc = (inset.images[0].get_array() for inset in insets)
    kernel = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    expected = conv_to_fc(kernel, 4, 4).numpy()
    assert (identity.filled(0) == np.eye(16)).all()
    assert (fc.filled(0) == expected).all()
    one_hot = torch.eye(16).reshape(16, 1, 4, 4)
    responses = torch.nn.functional.conv2d(one_hot, kernel, padding=1).reshape(16, 16)
    assert torch.equal(responses.T, torch.from_numpy(expected))


def test_committed_overview_is_what_the_function_draws(tmp_path):
    """book/figures/overview.png is redrawn by ``python book/figures/regenerate.py``; a changed
    drawing (or a forgotten regeneration) shows here. Pixels, not bytes: font rendering may differ
    by a shade between machines."""
    fresh = tmp_path / "overview.png"
    save_overview(str(fresh))
    committed = np.asarray(Image.open(OVERVIEW_PNG).convert("RGB"), dtype=float)
    drawn = np.asarray(Image.open(fresh).convert("RGB"), dtype=float)
    assert committed.shape == drawn.shape, "regenerate: python book/figures/regenerate.py"
    assert np.abs(committed - drawn).mean() < 1.0, "regenerate: python book/figures/regenerate.py"
