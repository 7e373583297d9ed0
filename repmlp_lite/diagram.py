"""Figures of chapters 4 and 7: the blocks' data flow, and how a feature map is cut into partitions.

* :func:`block_diagram`: the training-time block (global, partition and local perceptrons)
  above its inference-time form (FC1, FC2, one FC3), one column wide, every box labelled with the real
  sizes of a given :class:`~repmlp_lite.block.RepMLPBlock`.
* :func:`partition_diagram`: an ``H x W`` map of numbered pixels cut into ``h x w``
  partitions by :func:`~repmlp_lite.block.partition`, and the stack of partitions it returns.

Every box is a text with a rounded patch sized to it; both carry the same ``gid``
(e.g. ``"train:fc3"``, ``"deploy:fc3"``) so tests and readers can find a box by name.
The boxes are measured on the figure's own canvas, so the figures are built with a fixed
layout (no ``tight_layout``): the sizes stay right when the figure is shown or saved.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch, Rectangle

from ._checks import check_divisible, check_positive
from .block import RepMLPBlock, partition
from .repmlpnet import RepMLPNetBlock
from .style import COLUMN_WIDTH_IN

FONT_SIZE = 9.0
BOX_PAD_PT = 4.0  # padding between a box's text and its border, in points

COLORS = {
    "global": "#fbd9b0",
    "partition": "#c6dcf5",
    "local": "#cde9c6",
    "data": "#e6e6e6",
}
LEGEND = {
    "global": "global perceptron",
    "partition": "partition perceptron",
    "local": "local perceptron",
    "data": "input, reshapes, sums",
}


def draw_box(
    ax: Axes, gid: str, x: float, y: float, text: str, kind: str, fontsize: float = FONT_SIZE
) -> FancyBboxPatch:
    """Draw ``text`` centred at ``(x, y)`` (axes fraction) in a rounded box of colour ``kind``; return the box."""
    label = ax.text(
        x, y, text, ha="center", va="center", fontsize=fontsize, transform=ax.transAxes, zorder=3, gid=gid
    )
    fig = ax.figure
    extent = label.get_window_extent(fig.canvas.get_renderer())
    pad = BOX_PAD_PT * fig.dpi / 72.0
    corners = [[extent.x0 - pad, extent.y0 - pad], [extent.x1 + pad, extent.y1 + pad]]
    (x0, y0), (x1, y1) = ax.transAxes.inverted().transform(corners)
    box = FancyBboxPatch(
        (x0, y0),
        x1 - x0,
        y1 - y0,
        boxstyle="round,pad=0,rounding_size=0.008",
        transform=ax.transAxes,
        facecolor=COLORS[kind],
        edgecolor="#555555",
        linewidth=0.8,
        zorder=2,
        gid=gid,
    )
    ax.add_patch(box)
    return box


def draw_arrow(ax: Axes, start: FancyBboxPatch, end: FancyBboxPatch, route: str = "straight") -> None:
    """An arrow from the centre of ``start`` to the centre of ``end``, clipped at both boxes' borders.

    ``route`` is ``"straight"``, ``"across-down"`` (leave sideways, turn down into ``end``) or
    ``"down-across"`` (leave downwards, turn sideways into ``end``).
    """

    def centre(box: FancyBboxPatch) -> tuple[float, float]:
        return box.get_x() + box.get_width() / 2, box.get_y() + box.get_height() / 2

    connection = {
        "straight": "arc3,rad=0",
        "across-down": "angle,angleA=0,angleB=90,rad=0",
        "down-across": "angle,angleA=90,angleB=0,rad=0",
    }[route]
    ax.add_patch(
        FancyArrowPatch(
            centre(start),
            centre(end),
            patchA=start,
            patchB=end,
            arrowstyle="-|>",
            connectionstyle=connection,
            mutation_scale=11,
            shrinkA=1,
            shrinkB=1,
            color="#333333",
            linewidth=1.0,
            transform=ax.transAxes,
            zorder=1,
        )
    )


def grid_row(i: float, rows: float = 12.8) -> float:
    """The y position (axes fraction) of row ``i`` of ``rows``, row 0 at the top."""
    return 1.0 - (i + 0.5) / rows


def _kernel_sizes(block: RepMLPBlock) -> list[int]:
    """The kernel sizes of the block's local-perceptron branches, in order."""
    return [branch.conv.kernel_size[0] for branch in block.local_perceptron.values()]


def _draw_training(ax: Axes, block: RepMLPBlock) -> None:
    """The training-time block: global perceptron (left column), partition and local perceptrons (bottom)."""
    C, O, H, W, h, w, g = block.in_channels, block.out_channels, block.H, block.W, block.h, block.w, block.groups
    hp, wp = H // h, W // w
    main_x, global_x = 0.56, 0.2
    x_in = draw_box(ax, "train:input", main_x, grid_row(0), f"input x\n(N, C, H, W) = (N, {C}, {H}, {W})", "data")

    gp = block.global_perceptron
    if gp is None:
        draw_box(ax, "train:no_global", global_x, grid_row(3), "no global perceptron:\none partition (H×W = h×w)", "global")
        above_partition = x_in
    else:
        steps = [
            ("train:pool", f"AvgPool h×w = {h}×{w}\n→ (N, {C}, {hp}, {wp})"),
            ("train:global_bn", f"BN2d(C = {C})"),
            (
                "train:fc1",
                f"FC1: {gp.fc1.in_features} → {gp.fc1.out_features}\n(hidden = C·H/h·W/w\n÷ FC1 reduction)",
            ),
            ("train:relu", "ReLU"),
            ("train:fc2", f"FC2: {gp.fc2.in_features} → {gp.fc2.out_features}\n→ (N, {C}, {hp}, {wp})"),
        ]
        previous = x_in
        for row, (gid, text) in enumerate(steps, start=1):
            current = draw_box(ax, gid, global_x, grid_row(row), text, "global")
            draw_arrow(ax, previous, current, "across-down" if previous is x_in else "straight")
            previous = current
        add = draw_box(ax, "train:add", main_x, grid_row(6), "add: each partition's value\nto all its h×w pixels", "global")
        draw_arrow(ax, x_in, add)
        draw_arrow(ax, previous, add, "down-across")
        above_partition = add

    parts = draw_box(
        ax, "train:partition", main_x, grid_row(7), f"partition\n→ (N·{hp * wp}, {C}, {h}, {w})", "data"
    )
    draw_arrow(ax, above_partition, parts)

    kernels = _kernel_sizes(block)
    xs = np.linspace(0.0, 1.0, 2 * (1 + len(kernels)) + 1)[1::2]
    fc3_text = f"FC3, g = {g}\nC·h·w = {C * h * w} →\nO·h·w = {O * h * w}"
    fc3 = draw_box(ax, "train:fc3", xs[0], grid_row(8), fc3_text, "partition")
    fc3_bn = draw_box(ax, "train:fc3_bn", xs[0], grid_row(9.3), f"BN1d({O * h * w})", "partition")
    draw_arrow(ax, parts, fc3, "across-down")
    draw_arrow(ax, fc3, fc3_bn)
    branch_ends = [fc3_bn]
    for x, k in zip(xs[1:], kernels):
        conv = draw_box(ax, f"train:conv{k}", x, grid_row(8), f"conv {k}×{k}\ng = {g}, pad {k // 2}\n{C} → {O} ch", "local")
        bn = draw_box(ax, f"train:conv{k}_bn", x, grid_row(9.3), f"BN2d({O})", "local")
        draw_arrow(ax, parts, conv, "across-down")
        draw_arrow(ax, conv, bn)
        branch_ends.append(bn)

    total = draw_box(ax, "train:sum", main_x, grid_row(10.5), f"sum → (N·{hp * wp}, {O}, {h}, {w})", "data")
    for end in branch_ends:
        draw_arrow(ax, end, total, "down-across")
    out = draw_box(ax, "train:output", main_x, grid_row(11.6), f"unpartition → (N, {O}, {H}, {W})", "data")
    draw_arrow(ax, total, out)


def _draw_deployed(ax: Axes, block: RepMLPBlock) -> None:
    """The inference-time block: FC1 (BN folded in), FC2, one FC3 with bias; no BN, no conv."""
    C, O, H, W, h, w, g = block.in_channels, block.out_channels, block.H, block.W, block.h, block.w, block.groups
    hp, wp = H // h, W // w
    main_x, global_x = 0.68, 0.22
    x_in = draw_box(ax, "deploy:input", main_x, grid_row(0), f"input x\n(N, {C}, {H}, {W})", "data")

    gp = block.global_perceptron
    if gp is None:
        above_partition = x_in
    else:
        steps = [
            ("deploy:pool", f"AvgPool {h}×{w}"),
            ("deploy:fc1", f"FC1 (BN folded in)\n{gp.fc1.in_features} → {gp.fc1.out_features}"),
            ("deploy:relu", "ReLU"),
            ("deploy:fc2", f"FC2: {gp.fc2.in_features} → {gp.fc2.out_features}"),
        ]
        previous = x_in
        for row, (gid, text) in zip((1, 3, 4, 5), steps):
            current = draw_box(ax, gid, global_x, grid_row(row), text, "global")
            draw_arrow(ax, previous, current, "across-down" if previous is x_in else "straight")
            previous = current
        add = draw_box(ax, "deploy:add", main_x, grid_row(6), "add to each\npartition", "global")
        draw_arrow(ax, x_in, add)
        draw_arrow(ax, previous, add, "down-across")
        above_partition = add

    parts = draw_box(ax, "deploy:partition", main_x, grid_row(7), f"partition\n→ (N·{hp * wp}, {C}, {h}, {w})", "data")
    draw_arrow(ax, above_partition, parts)
    rows, cols = block.fc3.weight.shape
    fc3 = draw_box(
        ax,
        "deploy:fc3",
        main_x,
        grid_row(8.9),
        f"FC3 + bias (merged), g = {g}\n{C * h * w} → {O * h * w}\nweight ({rows}, {cols})",
        "partition",
    )
    draw_arrow(ax, parts, fc3)
    out = draw_box(ax, "deploy:output", main_x, grid_row(11.6), f"unpartition\n→ (N, {O}, {H}, {W})", "data")
    draw_arrow(ax, fc3, out)


def block_diagram(block: RepMLPBlock) -> Figure:
    """The data flow of ``block`` at training time (top) and after ``switch_to_deploy()`` (bottom).

    Boxes are labelled with the block's real sizes (``C``, ``O``, ``H``, ``W``, ``h``, ``w``, ``g``,
    FC1's hidden size, the conv kernel sizes). ``N`` is the batch size.

    Raises:
        ValueError: if ``block`` is already merged (its conv branches, needed for the training-time panel, are gone).
    """
    if block.deployed:
        raise ValueError("draw the block before switch_to_deploy(): the merged block has no conv branches left")
    # One column wide (the book's COLUMN_WIDTH_IN): the training-time block on top, the deployed one below.
    train_height, deploy_height, legend_height, title_height = 7.6, 6.4, 0.6, 0.35
    height = train_height + deploy_height + legend_height + 2 * title_height
    fig = plt.figure(figsize=(COLUMN_WIDTH_IN, height))
    bottom_y = legend_height / height
    top_y = (legend_height + deploy_height + title_height) / height
    top = fig.add_axes((0.0, top_y, 1.0, train_height / height))
    bottom = fig.add_axes((0.0, bottom_y, 1.0, deploy_height / height))
    left, right = top, bottom
    for ax, title in [(left, "training time"), (right, "inference time (after switch_to_deploy())")]:
        ax.set_axis_off()
        ax.set_title(title, fontsize=FONT_SIZE + 3)
    separator_y = top_y - 0.3 * title_height / height  # between the training panel and the title below it
    fig.add_artist(plt.Line2D([0, 1], [separator_y] * 2, color="#999999", linewidth=0.8, linestyle="--"))
    _draw_training(left, block)
    _draw_deployed(right, block)
    handles = [Patch(facecolor=COLORS[kind], edgecolor="#555555", label=label) for kind, label in LEGEND.items()]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=FONT_SIZE, frameon=False)
    return fig


def _pale(colour: Sequence[float], amount: float = 0.45) -> tuple[float, float, float]:
    """``colour`` mixed with white, so black text on it stays readable."""
    r, g, b = to_rgb(colour)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def _draw_grid(
    ax: Axes, x0: float, y0: float, numbers: np.ndarray, colours: list[list[tuple[float, float, float]]],
    fontsize: float, gid: str,
) -> None:
    """Cells of side 1 from ``(x0, y0)`` (top-left, y downwards), numbered, each filled with its colour.

    The numbers' texts get ``gid``.
    """
    rows, cols = numbers.shape
    for i in range(rows):
        for j in range(cols):
            ax.add_patch(
                Rectangle((x0 + j, y0 + i), 1, 1, facecolor=colours[i][j], edgecolor="white", linewidth=0.8)
            )
            ax.text(
                x0 + j + 0.5, y0 + i + 0.5, str(numbers[i, j]), ha="center", va="center", fontsize=fontsize, gid=gid
            )


def partition_diagram(H: int, W: int, h: int, w: int) -> Figure:
    """An ``H x W`` map of numbered pixels, coloured by partition, and the stack ``partition`` returns.

    The pixel numbers are the values of ``torch.arange(H*W)`` laid out as one ``(1, 1, H, W)``
    image; the right panel shows ``partition(x, h, w)`` of shape ``(H/h * W/w, 1, h, w)``,
    so each tile holds exactly the pixels of one coloured partition. The numbers of the map
    have ``gid`` ``"map"``, those of tile ``i`` ``"tile:i"``, its ``[i]`` label ``"label:i"``.

    Raises:
        ValueError: if a size is not positive or ``h``, ``w`` do not divide ``H``, ``W``.
    """
    for name, value in [("H", H), ("W", W), ("h", h), ("w", w)]:
        check_positive(name, value)
    check_divisible("H", H, "h", h)
    check_divisible("W", W, "w", w)
    image = torch.arange(H * W).reshape(1, 1, H, W)
    tiles = partition(image, h, w)[:, 0].numpy()  # (P, h, w)
    count = tiles.shape[0]
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    palette = [_pale(cmap(i % 20)) for i in range(count)]  # beyond 20 partitions, colours repeat
    owner = np.empty(H * W, dtype=int)
    for i, tile in enumerate(tiles):
        owner[tile.ravel()] = i
    owner = owner.reshape(H, W)
    fontsize = 8 if max(H, W) <= 12 else 6

    cols = min(count, 2)  # tiles per row of the stack: the figure stays one column wide
    tile_rows = (count + cols - 1) // cols
    gap = 1.0
    stack_width = cols * w + (cols - 1) * gap
    stack_height = tile_rows * (h + gap + 0.6)
    arrow_space = 4.0
    width_cells = W + arrow_space + stack_width
    inch_per_cell = min(0.42, (COLUMN_WIDTH_IN - 0.4) / width_cells)
    fig, ax = plt.subplots(
        figsize=(inch_per_cell * width_cells + 0.4, inch_per_cell * (max(H, stack_height) + 3.0))
    )
    fig.subplots_adjust(0, 0, 1, 1)
    ax.set_axis_off()
    ax.set_aspect("equal")

    map_colours = [[palette[owner[i, j]] for j in range(W)] for i in range(H)]
    _draw_grid(ax, 0, 0, image[0, 0].numpy(), map_colours, fontsize, "map")
    for y in range(0, H + 1, h):
        ax.plot([0, W], [y, y], color="black", linewidth=2)
    for x in range(0, W + 1, w):
        ax.plot([x, x], [0, H], color="black", linewidth=2)
    ax.text(W / 2, -0.6, f"x: (N, C, H, W) = (1, 1, {H}, {W})", ha="center", va="bottom", fontsize=FONT_SIZE + 1)

    ax.annotate(
        "",
        xy=(W + arrow_space - 0.5, min(H, stack_height) / 2),
        xytext=(W + 0.5, min(H, stack_height) / 2),
        arrowprops={"arrowstyle": "-|>", "color": "#333333", "linewidth": 1.5, "mutation_scale": 16},
    )
    ax.text(
        W + arrow_space / 2, min(H, stack_height) / 2 - 0.4, f"partition\n(x, {h}, {w})",
        ha="center", va="bottom", fontsize=FONT_SIZE,
    )

    x_stack = W + arrow_space
    for i, tile in enumerate(tiles):
        x0 = x_stack + (i % cols) * (w + gap)
        y0 = (i // cols) * (h + gap + 0.6) + 0.6
        ax.text(x0 + w / 2, y0 - 0.15, f"[{i}]", ha="center", va="bottom", fontsize=fontsize, gid=f"label:{i}")
        _draw_grid(ax, x0, y0, tile, [[palette[i]] * w for _ in range(h)], fontsize, f"tile:{i}")
        ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor="black", linewidth=2))
    ax.text(
        x_stack + stack_width / 2, -0.6,
        f"partition(x, h, w):\n(N·H/h·W/w, C, h, w) = ({count}, 1, {h}, {w})",
        ha="center", va="bottom", fontsize=FONT_SIZE + 1,
    )
    ax.set_xlim(-0.2, x_stack + stack_width + 0.2)
    ax.set_ylim(max(H, stack_height) + 0.2, -2.8)
    return fig


# ---- RepMLPNet (chapter 7) -------------------------------------------------------------------------


def _net_block_sizes(block: RepMLPNetBlock, H: int, W: int) -> tuple[int, int, int, int, int, int]:
    """``(C, S, h, w, partitions, hidden)`` of a RepMLPNet block on an ``H x W`` map."""
    check_divisible("H", H, "h", block.h)
    check_divisible("W", W, "w", block.w)
    hidden = block.gate.fc1.out_channels
    return block.channels, block.sets, block.h, block.w, (H // block.h) * (W // block.w), hidden


def _draw_net_training(ax: Axes, block: RepMLPNetBlock, H: int, W: int) -> None:
    """The training-time RepMLPNet block: channel gate (left), FC3 and conv branches on the S-set maps."""
    C, S, h, w, P, hidden = _net_block_sizes(block, H, W)
    rows = 9.0
    main_x, gate_x = 0.62, 0.13
    x_in = draw_box(ax, "net:input", main_x, grid_row(0, rows), f"input (N, {C}, {H}, {W})", "data")
    pool = draw_box(ax, "net:pool", gate_x, grid_row(1, rows), f"avg pool\n→ (N, {C}, 1, 1)", "global")
    fc1 = draw_box(ax, "net:fc1", gate_x, grid_row(2.3, rows), f"FC1 {C}→{hidden}\nReLU", "global")
    fc2 = draw_box(ax, "net:fc2", gate_x, grid_row(3.6, rows), f"FC2 {hidden}→{C}\nsigmoid", "global")
    draw_arrow(ax, x_in, pool, "across-down")
    draw_arrow(ax, pool, fc1)
    draw_arrow(ax, fc1, fc2)
    parts = draw_box(
        ax, "net:partition", main_x, grid_row(1.2, rows),
        f"partition, C into sets\n→ (N·{P}·{C // S}, S={S}, {h}, {w})", "data",
    )
    draw_arrow(ax, x_in, parts)
    kernels = [branch.conv.kernel_size[0] for branch in block.local_perceptron.values()]
    xs = np.linspace(0.30, 0.98, 2 * (1 + len(kernels)) + 1)[1::2]
    fc3 = draw_box(ax, "net:fc3", xs[0], grid_row(2.7, rows), f"FC3: {S} FCs\n{h * w}→{h * w}", "partition")
    fc3_bn = draw_box(ax, "net:fc3_bn", xs[0], grid_row(4.0, rows), f"BN({S})", "partition")
    draw_arrow(ax, parts, fc3, "down-across" if len(kernels) == 0 else "across-down")
    draw_arrow(ax, fc3, fc3_bn)
    ends = [fc3_bn]
    for x, k in zip(xs[1:], kernels):
        conv = draw_box(ax, f"net:conv{k}", x, grid_row(2.7, rows), f"conv {k}×{k}\ngroups {S}", "local")
        bn = draw_box(ax, f"net:conv{k}_bn", x, grid_row(4.0, rows), f"BN({S})", "local")
        draw_arrow(ax, parts, conv, "across-down")
        draw_arrow(ax, conv, bn)
        ends.append(bn)
    total = draw_box(ax, "net:sum", main_x, grid_row(5.3, rows), "sum", "data")
    for end in ends:
        draw_arrow(ax, end, total, "down-across")
    out = draw_box(ax, "net:unpartition", main_x, grid_row(6.5, rows), f"unpartition → (N, {C}, {H}, {W})", "data")
    draw_arrow(ax, total, out)
    gated = draw_box(ax, "net:multiply", main_x, grid_row(7.8, rows), "× gate (per channel)", "global")
    draw_arrow(ax, out, gated)
    draw_arrow(ax, fc2, gated, "down-across")


def _draw_net_deployed(ax: Axes, block: RepMLPNetBlock, H: int, W: int) -> None:
    """The deployed RepMLPNet block: the same gate, one FC3 with bias (Locality Injection)."""
    C, S, h, w, P, hidden = _net_block_sizes(block, H, W)
    rows = 9.0
    main_x, gate_x = 0.68, 0.2
    x_in = draw_box(ax, "netdeploy:input", main_x, grid_row(0, rows), f"input\n(N, {C}, {H}, {W})", "data")
    gate = draw_box(ax, "netdeploy:gate", gate_x, grid_row(2.3, rows), "pool,\nFC1, ReLU,\nFC2,\nsigmoid", "global")
    draw_arrow(ax, x_in, gate, "across-down")
    parts = draw_box(ax, "netdeploy:partition", main_x, grid_row(1.4, rows), "partition", "data")
    draw_arrow(ax, x_in, parts)
    fc3 = draw_box(ax, "netdeploy:fc3", main_x, grid_row(3.4, rows), f"FC3 + bias\n{S} FCs\n{h * w}→{h * w}", "partition")
    draw_arrow(ax, parts, fc3)
    out = draw_box(ax, "netdeploy:unpartition", main_x, grid_row(6.5, rows), "unpartition", "data")
    draw_arrow(ax, fc3, out)
    gated = draw_box(ax, "netdeploy:multiply", main_x, grid_row(7.8, rows), "× gate", "global")
    draw_arrow(ax, out, gated)
    draw_arrow(ax, gate, gated, "down-across")


def repmlpnet_block_diagram(block: RepMLPNetBlock, H: int, W: int, width: float = COLUMN_WIDTH_IN) -> Figure:
    """The RepMLPNet block at training time (left) and after Locality Injection (right), ``width``
    inches wide (the book's column), labelled with the block's sizes on an ``H x W`` map.

    Raises ``ValueError`` if the block is already merged or ``h, w`` do not divide ``H, W``.
    """
    if block.deployed:
        raise ValueError("draw the block before switch_to_deploy(): the merged block has no conv branches left")
    fig = plt.figure(figsize=(width, 0.78 * width))
    split = 0.7
    left = fig.add_axes((0.0, 0.08, split, 0.86))
    right = fig.add_axes((split, 0.08, 1 - split, 0.86))
    for ax, title in [(left, "training time"), (right, "deployed")]:
        ax.set_axis_off()
        ax.set_title(title, fontsize=FONT_SIZE + 1)
    right.axvline(0.0, color="#999999", linewidth=0.8, linestyle="--")
    _draw_net_training(left, block, H, W)
    _draw_net_deployed(right, block, H, W)
    labels = {"global": "channel gate", "partition": "FC3 (channel perceptron)", "local": "local perceptron",
              "data": "data, reshapes"}
    handles = [Patch(facecolor=COLORS[kind], edgecolor="#555555", label=label) for kind, label in labels.items()]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=FONT_SIZE, frameon=False)
    return fig
