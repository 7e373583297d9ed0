"""Pictures of the FC kernel of a conv (Chapters 1 to 3): the matrix, its bands, a gallery, and their counts.

Every matrix drawn here comes from :func:`repmlp_lite.conv_as_fc.conv_to_fc` (expanded to its dense,
block-diagonal form by :func:`~repmlp_lite.conv_as_fc.grouped_to_dense` when ``groups > 1``). Shapes:

* a conv kernel ``F`` is ``(O, C/g, K, K)``; it acts on one ``(C, h, w)`` partition and gives ``(O, h', w')``;
* its dense FC kernel is ``(O*h'*w', C*h*w)``: row ``o*h'*w' + i*w' + j`` is output pixel ``(o, i, j)``,
  column ``c*h*w + y*w + x`` is input pixel ``(c, y, x)``.

In the pictures a diverging colormap shows the values, exact zeros are white, thin grey lines
separate channels and thick black lines separate groups.

The figure style (column width, :func:`~repmlp_lite.style.use_book_style`) is in :mod:`repmlp_lite.style`;
the controls that show these pictures (the chapters' explorers) in :mod:`repmlp_lite.explorers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ._checks import check_divisible, check_positive
from .conv_as_fc import conv_output_size, conv_to_fc, grouped_to_dense
from .style import COLUMN_WIDTH_IN, column_figsize

_CMAP = matplotlib.colormaps["coolwarm"].with_extremes(bad="white")  # masked (exact zero) entries are white
_MAX_VALUE_LABELS = 2500  # show_values writes one label per entry: only for small matrices


def dense_fc_kernel(kernel: torch.Tensor, h: int, w: int, padding: int | None = None, groups: int = 1) -> torch.Tensor:
    """The FC kernel of a conv as one dense matrix.

    Args:
        kernel: conv weight ``(O, C/g, K, K)``.
        h, w: the input size the FC acts on.
        padding: ``None`` for "same" padding ``K // 2``, or ``p >= 0``.
        groups: the conv's ``g``.

    Returns:
        ``(O*h'*w', C*h*w)``; block-diagonal with ``g`` blocks when ``groups > 1``.
    """
    return grouped_to_dense(conv_to_fc(kernel, h, w, padding, groups), groups)


def kernel_taps(kernel_size: int, h: int, w: int, padding: int | None = None) -> torch.Tensor:
    """Which kernel entry each entry of a one-channel FC kernel copies.

    Built by converting the kernel whose entries are ``1, 2, ..., K*K`` (in float64, so exactly).

    Returns:
        int64 ``(h'*w', h*w)``: ``0`` where the FC kernel is always zero, ``a*K + b + 1`` where it
        holds ``F[a, b]``.
    """
    check_positive("kernel_size", kernel_size)
    ids = torch.arange(1, kernel_size**2 + 1, dtype=torch.float64).reshape(1, 1, kernel_size, kernel_size)
    return conv_to_fc(ids, h, w, padding).round().long()


class SparsityStats(NamedTuple):
    """Counts for the dense FC kernel ``(rows, cols)`` of a conv; they depend on shapes only."""

    rows: int  # O*h'*w'
    cols: int  # C*h*w
    nonzeros: int  # entries the conv can make nonzero
    distinct_weights: int  # kernel entries that appear in the matrix (at most conv_params)
    conv_params: int  # O * C/g * K * K
    grouped_fc_params: int  # rows * cols / g: what a grouped FC of this shape stores

    @property
    def dense_fc_params(self) -> int:
        """``rows * cols``: the parameters of an ungrouped FC of the same shape."""
        return self.rows * self.cols

    @property
    def density(self) -> float:
        """Fraction of the dense matrix's entries that are nonzero."""
        return self.nonzeros / self.dense_fc_params

    def summary(self) -> str:
        """One line for a caption: shape, nonzeros, and how many distinct values fill them."""
        return (
            f"W is {self.rows} x {self.cols} = {self.dense_fc_params:,} entries; "
            f"{self.nonzeros:,} can be nonzero ({self.density:.1%}); they hold "
            f"{self.distinct_weights} distinct values, from the conv's {self.conv_params} weights"
        )


def sparsity_stats(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    h: int,
    w: int,
    padding: int | None = None,
    groups: int = 1,
) -> SparsityStats:
    """Nonzeros and distinct values of the FC kernel of a ``C -> O`` conv with ``K x K`` kernels on ``h x w``.

    Converts the kernel whose ``O * C/g * K * K`` entries are ``1, 2, ...``: with stride 1 every
    entry of the FC kernel copies at most one kernel entry, so its nonzeros are the structural
    nonzeros and its distinct values are the kernel entries that reach the matrix.
    Raises ``ValueError`` for a combination no conv has (e.g. ``groups`` not dividing ``C``).
    """
    for name, value in [("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel_size)]:
        check_positive(name, value)
    check_positive("groups", groups)
    check_divisible("in channels C", in_channels, "groups", groups)
    conv_params = out_channels * (in_channels // groups) * kernel_size**2
    ids = torch.arange(1, conv_params + 1, dtype=torch.float64)
    fc = dense_fc_kernel(ids.reshape(out_channels, -1, kernel_size, kernel_size), h, w, padding, groups)
    nonzero = fc[fc != 0]
    return SparsityStats(
        rows=fc.shape[0],
        cols=fc.shape[1],
        nonzeros=nonzero.numel(),
        distinct_weights=nonzero.unique().numel(),
        conv_params=conv_params,
        grouped_fc_params=fc.numel() // groups,
    )


def _as_dense(
    kernel_or_fc: torch.Tensor,
    h: int,
    w: int,
    padding: int | None,
    groups: int,
    out_hw: tuple[int, int] | None,
) -> tuple[torch.Tensor, tuple[int, int], int]:
    """``(dense (O*h'*w', C*h*w), (h', w'), C)`` for a conv kernel or a grouped FC kernel."""
    if kernel_or_fc.dim() == 4:
        if out_hw is not None:
            raise ValueError("out_hw is for a 2-D FC kernel; a conv kernel's output size follows from padding")
        dense = dense_fc_kernel(kernel_or_fc, h, w, padding, groups)
        k = kernel_or_fc.shape[-1]
        pad = k // 2 if padding is None else padding
        out_h, out_w = conv_output_size(h, k, pad), conv_output_size(w, k, pad)
    elif kernel_or_fc.dim() == 2:
        if padding is not None:
            raise ValueError("padding is for a 4-D conv kernel; for a 2-D FC kernel pass out_hw=(h', w')")
        dense = grouped_to_dense(kernel_or_fc, groups)
        out_h, out_w = (h, w) if out_hw is None else out_hw
        check_divisible("FC kernel columns", dense.shape[1], "h*w", h * w)
        check_divisible("FC kernel rows", dense.shape[0], "h'*w'", out_h * out_w)
    else:
        raise ValueError(
            f"expected a conv kernel (O, C/g, K, K) or an FC kernel (rows, cols), got shape {tuple(kernel_or_fc.shape)}"
        )
    return dense, (out_h, out_w), dense.shape[1] // (h * w)


def _boundaries(ax: Axes, size: int, step: int, horizontal: bool, **line: object) -> None:
    """Lines between matrix cells every ``step`` rows (``horizontal``) or columns, up to ``size``."""
    for pos in range(step, size, step):
        (ax.axhline if horizontal else ax.axvline)(pos - 0.5, **line)


def _block_ticks(ax: Axes, rows: int, cols: int, row_step: int, col_step: int, row_name: str, col_name: str) -> None:
    """One tick per block of ``row_step`` rows / ``col_step`` columns, at its centre, labelled by block index."""
    ax.set_yticks(np.arange(row_step / 2 - 0.5, rows, row_step), [f"{row_name}={k}" for k in range(rows // row_step)])
    ax.set_xticks(np.arange(col_step / 2 - 0.5, cols, col_step), [f"{col_name}={k}" for k in range(cols // col_step)])


def plot_fc_kernel(
    kernel_or_fc: torch.Tensor,
    h: int,
    w: int,
    padding: int | None = None,
    groups: int = 1,
    *,
    out_hw: tuple[int, int] | None = None,
    ax: Axes | None = None,
    show_values: bool = False,
    pixel_rows: bool = False,
    ticks: bool = True,
    colorbar: bool = False,
) -> Axes:
    """Draw the dense FC kernel ``(O*h'*w', C*h*w)`` of a conv, zeros white.

    Args:
        kernel_or_fc: a conv kernel ``(O, C/g, K, K)`` (converted with ``padding`` and ``groups``),
            or a 2-D FC kernel in :func:`~repmlp_lite.conv_as_fc.conv_to_fc`'s layout
            ``(O*h'*w', (C/g)*h*w)`` (expanded block-diagonally when ``groups > 1``).
        h, w: input size of the conv (one partition).
        padding: for a conv kernel: ``None`` ("same") or ``p >= 0``.
        groups: ``g``; thick black lines separate the groups' blocks.
        out_hw: for a 2-D FC kernel: ``(h', w')``; ``None`` means ``(h, w)``.
        ax: where to draw; ``None`` makes a new figure.
        show_values: write each nonzero value in its cell (small matrices only).
        pixel_rows: dotted lines between image rows (every ``w`` columns, every ``w'`` rows).
        ticks: label blocks: image rows ``y``/``i`` for one channel, channels ``c``/``o`` otherwise.
        colorbar: add a colorbar.

    Returns:
        The axes; ``ax.images[0]`` holds the ``(O*h'*w', C*h*w)`` array.
    """
    dense, (out_h, out_w), in_channels = _as_dense(kernel_or_fc, h, w, padding, groups, out_hw)
    out_pixels = out_h * out_w
    values = dense.detach().to(torch.float64).cpu().numpy()
    rows, cols = values.shape
    if show_values and values.size > _MAX_VALUE_LABELS:
        raise ValueError(
            f"show_values writes one label per entry: use it for at most {_MAX_VALUE_LABELS} entries, got {values.size}"
        )
    if ax is None:  # 80% of the column: a square matrix stays within one screen
        _, ax = plt.subplots(figsize=column_figsize(min(1.0, rows / cols), 0.8), layout="constrained")
    vmax = float(np.abs(values).max()) or 1.0
    image = ax.imshow(np.ma.masked_equal(values, 0.0), cmap=_CMAP, vmin=-vmax, vmax=vmax, interpolation="nearest")

    if pixel_rows:
        dotted = {"color": "0.6", "linewidth": 0.5, "linestyle": ":"}
        _boundaries(ax, rows, out_w, True, **dotted)
        _boundaries(ax, cols, w, False, **dotted)
    thin = {"color": "0.45", "linewidth": 0.7}
    _boundaries(ax, rows, out_pixels, True, **thin)
    _boundaries(ax, cols, h * w, False, **thin)
    if groups > 1:
        thick = {"color": "black", "linewidth": 1.4}
        _boundaries(ax, rows, rows // groups, True, **thick)
        _boundaries(ax, cols, cols // groups, False, **thick)

    if show_values:
        for r, c in zip(*np.nonzero(values)):
            ax.text(c, r, f"{values[r, c]:.3g}", ha="center", va="center", fontsize=8)
    if not ticks:
        ax.set_xticks([])
        ax.set_yticks([])
    elif in_channels == 1 and rows == out_pixels:
        _block_ticks(ax, rows, cols, out_w, w, "i", "y")
        ax.set_ylabel("output pixel (i, j): one block per image row i")
        ax.set_xlabel("input pixel (y, x): one block per image row y")
    else:
        _block_ticks(ax, rows, cols, out_pixels, h * w, "o", "c")
        ax.set_ylabel("output pixel (o, i, j): one block per channel o")
        ax.set_xlabel("input pixel (c, y, x): one block per channel c")
    if colorbar:
        ax.figure.colorbar(image, ax=ax, shrink=0.8)
    return ax


def plot_band_map(kernel_size: int, h: int, w: int, padding: int | None = None, ax: Axes | None = None) -> Axes:
    """The one-channel FC kernel zoomed out to image rows: which kernel row fills each block.

    The ``(h'*w', h*w)`` matrix is an ``h' x h`` grid of ``w' x w`` blocks; block ``(i, y)`` (output
    image row ``i``, input image row ``y``) holds row ``a = y - i + p`` of ``F`` as a banded
    (Toeplitz) ``w' x w`` matrix, or zeros when ``a`` is outside ``0 ... K-1``.

    Returns:
        The axes; ``ax.images[0]`` holds the ``(h', h)`` grid.
    """
    taps = kernel_taps(kernel_size, h, w, padding)
    pad = kernel_size // 2 if padding is None else padding
    out_h, out_w = conv_output_size(h, kernel_size, pad), conv_output_size(w, kernel_size, pad)
    # (h'*w', h*w) -> (h', h, w'*w): the largest tap id in each block names its kernel row.
    blocks = taps.reshape(out_h, out_w, h, w).permute(0, 2, 1, 3).reshape(out_h, h, -1).amax(-1).numpy()
    kernel_row = np.ma.masked_less((blocks - 1) // kernel_size, 0)
    if ax is None:
        _, ax = plt.subplots(figsize=column_figsize(out_h / h, 0.6), layout="constrained")
    cmap = matplotlib.colormaps["viridis"].resampled(kernel_size).with_extremes(bad="white")
    ax.imshow(kernel_row, cmap=cmap, vmin=-0.5, vmax=kernel_size - 0.5, alpha=0.6)
    for i, y in zip(*np.nonzero(~np.ma.getmaskarray(kernel_row))):
        ax.text(y, i, f"row {kernel_row[i, y]}\nof F", ha="center", va="center", fontsize=9)
    _boundaries(ax, out_h, 1, True, color="0.45", linewidth=0.7)
    _boundaries(ax, h, 1, False, color="0.45", linewidth=0.7)
    ax.set_yticks(range(out_h), [f"i={i}" for i in range(out_h)])
    ax.set_xticks(range(h), [f"y={y}" for y in range(h)])
    ax.set_ylabel("output image row i")
    ax.set_xlabel("input image row y")
    return ax


def _draw_image(ax: Axes, image: torch.Tensor, title: str, rows: str, cols: str) -> None:
    """A small 2-D image ``(h, w)`` with its nonzero values written in, zeros white; axes named ``rows``, ``cols``."""
    values = image.detach().to(torch.float64).cpu().numpy()
    vmax = float(np.abs(values).max()) or 1.0
    ax.imshow(np.ma.masked_equal(values, 0.0), cmap=_CMAP, vmin=-vmax, vmax=vmax)
    for r, c in zip(*np.nonzero(values)):
        ax.text(c, r, f"{values[r, c]:.3g}", ha="center", va="center", fontsize=9)
    _boundaries(ax, values.shape[0], 1, True, color="0.8", linewidth=0.5)
    _boundaries(ax, values.shape[1], 1, False, color="0.8", linewidth=0.5)
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]))
    ax.set_xlabel(cols)
    ax.set_ylabel(rows)
    ax.set_title(title, fontsize=10)


def plot_one_hot_response(
    kernel: torch.Tensor, h: int, w: int, pixel: tuple[int, int], padding: int | None = None
) -> Figure:
    """Three panels: a one-hot ``h x w`` image, the conv's response to it, and ``W`` with that column boxed.

    Args:
        kernel: a one-channel conv kernel ``(1, 1, K, K)``.
        h, w: image size.
        pixel: ``(y, x)``, the pixel that is 1; it is column ``y*w + x`` of ``W``.
        padding: ``None`` ("same") or ``p >= 0``.

    Returns:
        The figure; its axes are the input ``(h, w)``, the response ``(h', w')`` and ``W`` ``(h'*w', h*w)``.
    """
    if kernel.dim() != 4 or tuple(kernel.shape[:2]) != (1, 1):
        raise ValueError(f"kernel must be a one-channel conv kernel (1, 1, K, K), got shape {tuple(kernel.shape)}")
    y, x = pixel
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"pixel {pixel} is outside the {h}x{w} image")
    fc = conv_to_fc(kernel, h, w, padding)  # checks K, padding, h, w
    pad = kernel.shape[-1] // 2 if padding is None else padding
    one_hot = torch.zeros(1, 1, h, w, dtype=kernel.dtype)
    one_hot[0, 0, y, x] = 1
    response = F.conv2d(one_hot, kernel, padding=pad)[0, 0]  # (h', w')
    column = y * w + x

    # At the column's width: the two small images side by side, W below them at full width.
    fig = plt.figure(figsize=column_figsize(1.25), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.9])
    axes = [*top.subplots(1, 2), bottom.subplots()]
    _draw_image(axes[0], one_hot[0, 0], f"one-hot input $E_{{{column}}}$\npixel (y, x) = ({y}, {x})", "y", "x")
    _draw_image(axes[1], response, f"its response\nCONV($E_{{{column}}}$, F, p)", "i", "j")
    plot_fc_kernel(fc, h, w, out_hw=tuple(response.shape), ax=axes[2], show_values=fc.numel() <= 400, pixel_rows=True)
    axes[2].add_patch(Rectangle((column - 0.5, -0.5), 1, fc.shape[0], fill=False, edgecolor="black", linewidth=2))
    axes[2].set_title(f"the response, flattened, is column {column} of W", fontsize=10)
    return fig


def kernel_gallery(
    kernel_sizes: tuple[int, ...] = (1, 3, 5),
    groups: tuple[int, ...] = (1, 2),
    channels: int = 4,
    h: int = 4,
    w: int = 4,
    seed: int = 0,
) -> Figure:
    """A grid of dense FC kernels ``(channels*h*w, channels*h*w)``: one row per ``groups``, one column per ``K``.

    Each panel converts a random ``channels -> channels`` conv with "same" padding (so every ``K``
    must be odd and every ``groups`` must divide ``channels``) and is titled with its share of nonzeros.
    The panels share the column's width; drawn nearest-neighbour, so that at the defaults (64 x 64
    matrices, three panels a row) every matrix entry is about three pixels wide at the book's
    resolution and a ``K = 1`` kernel's diagonals stay visible.
    """
    gen = torch.Generator().manual_seed(seed)
    panel = COLUMN_WIDTH_IN / len(kernel_sizes)  # panels share the column's width
    fig, axes = plt.subplots(
        len(groups), len(kernel_sizes), figsize=(COLUMN_WIDTH_IN, 1.2 * panel * len(groups) + 0.35),
        squeeze=False, layout="constrained",
    )
    for r, g in enumerate(groups):
        for c, k in enumerate(kernel_sizes):
            stats = sparsity_stats(channels, channels, k, h, w, groups=g)  # validates the combination
            kernel = torch.randn(channels, channels // g, k, k, generator=gen)
            ax = plot_fc_kernel(kernel, h, w, groups=g, ax=axes[r, c], ticks=False)
            ax.images[0].set_interpolation("nearest")
            ax.set_title(f"K = {k}, groups = {g}\n{stats.density:.1%} nonzero", fontsize=9)
    fig.suptitle(f"FC kernel of a random {channels} -> {channels}-channel conv on a {h} x {w} image, "
                 "'same' padding (zeros white)", fontsize=10)
    return fig


def explorer_figure(
    kernel_size: int,
    padding: int | None,
    groups: int,
    h: int,
    w: int,
    in_channels: int,
    out_channels: int,
    seed: int = 0,
) -> tuple[Figure, SparsityStats]:
    """The picture of :func:`repmlp_lite.explorers.kernel_explorer`: a random conv's dense FC kernel, with its counts.

    The figure is a plain :class:`~matplotlib.figure.Figure` (not registered with pyplot, so it is
    never shown twice or leaked). Raises ``ValueError`` for a combination no conv has.
    """
    stats = sparsity_stats(in_channels, out_channels, kernel_size, h, w, padding, groups)
    gen = torch.Generator().manual_seed(seed)
    kernel = torch.randn(out_channels, in_channels // groups, kernel_size, kernel_size, generator=gen)
    fig = Figure(figsize=column_figsize(0.86, 0.82), layout="constrained")
    ax = plot_fc_kernel(kernel, h, w, padding, groups, ax=fig.add_subplot(), colorbar=True)
    pad = "same" if padding is None else padding
    ax.set_title(f"K={kernel_size}, padding={pad}, groups={groups}, C={in_channels}, O={out_channels}, {h}x{w}")
    return fig, stats


def plot_fc_kernel_terms(
    terms: Sequence[tuple[str, torch.Tensor]],
    h: int,
    w: int,
    groups: int = 1,
    width: float = COLUMN_WIDTH_IN,
) -> Figure:
    """The terms of a sum of FC kernels side by side, on one colour scale with one colour bar.

    Args:
        terms: ``(title, kernel)`` pairs, each ``kernel`` a 2-D FC kernel in
            :func:`~repmlp_lite.conv_as_fc.conv_to_fc`'s layout ``(O*h*w, (C/g)*h*w)``, drawn as
            :func:`plot_fc_kernel` draws it (zeros white, groups' blocks between thick lines).
        h, w: the partition size.
        groups: ``g`` of every kernel.
        width: the figure's width in inches (the book's column).

    Every panel uses the symmetric range ``[-m, m]`` with ``m`` the largest ``|entry|`` of all
    terms, so that a small term looks small next to a large one. Returns the figure; raises
    ``ValueError`` for an empty ``terms``.
    """
    if not terms:
        raise ValueError("terms: give at least one (title, kernel) pair")
    vmax = max(float(kernel.detach().abs().max()) for _, kernel in terms) or 1.0
    fig, axes = plt.subplots(
        1, len(terms), figsize=(width, 0.36 * width), layout="constrained", squeeze=False
    )
    for ax, (title, kernel) in zip(axes[0], terms):
        plot_fc_kernel(kernel, h, w, groups=groups, ax=ax, ticks=False)
        ax.images[0].set_clim(-vmax, vmax)
        ax.set_title(title, fontsize=9)
    fig.colorbar(axes[0, 0].images[0], ax=list(axes[0]), shrink=0.75, label="weight")
    return fig
