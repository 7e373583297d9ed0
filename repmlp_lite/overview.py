"""The book's opening figure: RepMLP in one picture (the introduction's Fig. 1).

:func:`overview_diagram` draws (a) the training-time block, (b) the identity trick that turns a conv
into an FC kernel, computed with :func:`~repmlp_lite.conv_as_fc.conv_to_fc`, and (c) the merged block,
with the box and arrow primitives of :mod:`~repmlp_lite.diagram`. The book commits the picture as
``book/figures/overview.png`` (:func:`save_overview`; ``python book/figures/regenerate.py`` redraws it).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Patch

from .conv_as_fc import conv_to_fc
from .diagram import COLORS, LEGEND, draw_arrow, draw_box, grid_row
from .style import COLUMN_WIDTH_IN

OVERVIEW_FONT_SIZE = 8.0
OVERVIEW_SIZE = 4  # the identity trick's example: a 4 x 4 one-channel image, a 3 x 3 kernel


def overview_diagram(width: float = COLUMN_WIDTH_IN) -> Figure:
    """RepMLP in one picture, ``width`` inches wide: (a) the training-time block, (b) the identity
    trick, (c) the merged block of three FC layers.

    (b) is computed, not drawn by hand: the identity matrix of the ``hw = 16`` one-hot images of a
    ``4 x 4`` one-channel partition, and the FC kernel :func:`~repmlp_lite.conv_as_fc.conv_to_fc`
    returns for a ``3 x 3`` kernel with entries ``1 ... 9`` ("same" padding): the conv applied to
    the identity, reshaped. Boxes carry ``gid`` ``"overview:..."`` like :func:`block_diagram`'s.
    """
    fig = plt.figure(figsize=(width, 0.62 * width))
    legend_h = 0.1
    panels = [(0.0, 0.36), (0.365, 0.27), (0.645, 0.355)]
    train, trick, deploy = (fig.add_axes((x, legend_h, w, 1 - legend_h - 0.07)) for x, w in panels)
    titles = ["(a) training: three perceptrons", "(b) conv = FC: the identity trick",
              "(c) inference: three FC layers"]
    for ax, title in zip((train, trick, deploy), titles):
        ax.set_axis_off()
        ax.set_title(title, fontsize=OVERVIEW_FONT_SIZE + 1)
    size = OVERVIEW_FONT_SIZE
    rows = 9.0

    def box(ax: Axes, gid: str, x: float, row: float, text: str, kind: str) -> FancyBboxPatch:
        return draw_box(ax, f"overview:{gid}", x, grid_row(row, rows), text, kind, fontsize=size)

    # (a) the training-time block
    x_in = box(train, "train:input", 0.62, 0, "input", "data")
    gp = box(train, "train:global", 0.2, 1.6, "Global\nPerceptron:\npool, BN,\nFC1, ReLU,\nFC2", "global")
    add = box(train, "train:add", 0.62, 3.4, "add to each\npartition", "global")
    parts = box(train, "train:partition", 0.62, 4.5, "partition", "data")
    fc3 = box(train, "train:fc3", 0.17, 6.0, "FC3\n+ BN", "partition")
    conv1 = box(train, "train:conv1", 0.5, 6.0, "conv 1×1\n+ BN", "local")
    conv3 = box(train, "train:conv3", 0.83, 6.0, "conv 3×3\n+ BN", "local")
    total = box(train, "train:sum", 0.5, 7.5, "sum, unpartition", "data")
    draw_arrow(train, x_in, gp, "across-down")
    draw_arrow(train, x_in, add)
    draw_arrow(train, gp, add, "down-across")
    draw_arrow(train, add, parts)
    for branch in (fc3, conv1, conv3):
        draw_arrow(train, parts, branch, "straight")
        draw_arrow(train, branch, total, "straight")

    # (b) the identity trick, computed
    n = OVERVIEW_SIZE * OVERVIEW_SIZE
    kernel = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    fc = conv_to_fc(kernel, OVERVIEW_SIZE, OVERVIEW_SIZE).numpy()
    matrices = [
        (0.58, np.eye(n), f"I: the {n} one-hot images\nof a {OVERVIEW_SIZE}×{OVERVIEW_SIZE} partition",
         "Greys"),
        (0.07, fc, "CONV(I, F, p), reshaped:\nthe FC kernel W(F, p)", "Reds"),
    ]
    for y0, matrix, label, cmap in matrices:
        inset = trick.inset_axes((0.2, y0, 0.6, 0.3))
        inset.imshow(np.ma.masked_equal(matrix, 0.0), cmap=cmap, vmin=0, vmax=matrix.max() * 1.15,
                     interpolation="nearest")
        inset.set_xticks([])
        inset.set_yticks([])
        inset.set_title(label, fontsize=size - 0.5, pad=3)
    trick.annotate(
        "", xy=(0.5, 0.47), xytext=(0.5, 0.55), xycoords="axes fraction",
        arrowprops={"arrowstyle": "-|>", "color": "#333333", "linewidth": 1.2, "mutation_scale": 11},
    )
    trick.text(0.56, 0.51, "conv with\nF (3×3)", fontsize=size - 0.5, va="center", transform=trick.transAxes)

    # (c) the merged block
    d_in = box(deploy, "deploy:input", 0.62, 0, "input", "data")
    d_gp = box(deploy, "deploy:global", 0.2, 1.6, "pool,\nFC1 (BN\nfolded in),\nReLU, FC2", "global")
    d_add = box(deploy, "deploy:add", 0.62, 3.4, "add to each\npartition", "global")
    d_parts = box(deploy, "deploy:partition", 0.62, 4.5, "partition", "data")
    d_fc3 = box(deploy, "deploy:fc3", 0.62, 6.0, "FC3 + bias:\nFC3, BNs and the\nconvs' W(F, p) summed",
                "partition")
    d_out = box(deploy, "deploy:sum", 0.62, 7.5, "unpartition", "data")
    draw_arrow(deploy, d_in, d_gp, "across-down")
    draw_arrow(deploy, d_in, d_add)
    draw_arrow(deploy, d_gp, d_add, "down-across")
    draw_arrow(deploy, d_add, d_parts)
    draw_arrow(deploy, d_parts, d_fc3)
    draw_arrow(deploy, d_fc3, d_out)

    handles = [
        Patch(facecolor=COLORS[kind], edgecolor="#555555", label=label) for kind, label in LEGEND.items()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=size, frameon=False)
    return fig


def save_overview(path: str, width: float = COLUMN_WIDTH_IN, dpi: int = 100) -> None:
    """Write :func:`overview_diagram` to ``path`` (a PNG) with no metadata that changes from run to run."""
    fig = overview_diagram(width)
    try:
        fig.savefig(path, dpi=dpi, metadata={"Software": None})
    finally:
        plt.close(fig)
