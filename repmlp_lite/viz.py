"""Pictures of the FC kernel of a conv (Chapters 1 to 3): the matrix, its bands, a gallery and a live explorer.

Every matrix drawn here comes from :func:`repmlp_lite.conv_as_fc.conv_to_fc` (expanded to its dense,
block-diagonal form by :func:`~repmlp_lite.conv_as_fc.grouped_to_dense` when ``groups > 1``). Shapes:

* a conv kernel ``F`` is ``(O, C/g, K, K)``; it acts on one ``(C, h, w)`` partition and gives ``(O, h', w')``;
* its dense FC kernel is ``(O*h'*w', C*h*w)``: row ``o*h'*w' + i*w' + j`` is output pixel ``(o, i, j)``,
  column ``c*h*w + y*w + x`` is input pixel ``(c, y, x)``.

In the pictures a diverging colormap shows the values, exact zeros are white, thin grey lines
separate channels and thick black lines separate groups.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import ipywidgets as widgets
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import HTML, Image, clear_output, display
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image as PILImage

from ._checks import check_divisible, check_positive
from .book import static_page
from .conv_as_fc import conv_output_size, conv_to_fc, grouped_to_dense

# ipywidgets 8 has Stack and HTMLStyle; ipywidgets 7 (still the default in some hosted notebooks)
# has neither: a Tab (whose selected_index works the same, with a tab bar) and the description style.
_Stack = getattr(widgets, "Stack", widgets.Tab)
try:
    from ipywidgets.widgets.widget_string import HTMLStyle as _HTMLStyle
except ImportError:  # ipywidgets 7
    _HTMLStyle = widgets.DescriptionStyle

# The book's one figure style. Figures are drawn for the content column of the HTML book (688 px
# at a 1280 px window, measured by tests/test_browser.py): COLUMN_WIDTH_IN inches at FIGURE_DPI, so
# a figure is shown at its natural size and a 9 pt label is about 12 px on screen. Chapters call
# use_book_style() in their setup cell.
FIGURE_DPI = 100
COLUMN_WIDTH_IN = 6.8
BOOK_STYLE: dict[str, object] = {
    "figure.dpi": FIGURE_DPI,
    "savefig.dpi": FIGURE_DPI,
    "figure.figsize": (COLUMN_WIDTH_IN, 0.62 * COLUMN_WIDTH_IN),
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "legend.fontsize": 8.5,
    "figure.titlesize": 10,
}


def use_book_style() -> None:
    """Set matplotlib's defaults to the book's style (:data:`BOOK_STYLE`)."""
    matplotlib.rcParams.update(BOOK_STYLE)


def column_figsize(height_ratio: float, width_fraction: float = 1.0) -> tuple[float, float]:
    """``(width, height)`` in inches for a figure ``width_fraction`` of the column wide."""
    width = COLUMN_WIDTH_IN * width_fraction
    return width, width * height_ratio


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
    kernel_sizes: tuple[int, ...] = (1, 3, 5, 7),
    groups: tuple[int, ...] = (1, 2, 4),
    channels: int = 4,
    h: int = 6,
    w: int = 6,
    seed: int = 0,
) -> Figure:
    """A grid of dense FC kernels ``(channels*h*w, channels*h*w)``: one row per ``groups``, one column per ``K``.

    Each panel converts a random ``channels -> channels`` conv with "same" padding (so every ``K``
    must be odd and every ``groups`` must divide ``channels``) and is titled with its share of nonzeros.
    """
    gen = torch.Generator().manual_seed(seed)
    panel = COLUMN_WIDTH_IN / len(kernel_sizes)  # panels share the column's width
    fig, axes = plt.subplots(
        len(groups), len(kernel_sizes), figsize=(COLUMN_WIDTH_IN, 1.15 * panel * len(groups) + 0.4),
        squeeze=False, layout="constrained",
    )
    for r, g in enumerate(groups):
        for c, k in enumerate(kernel_sizes):
            stats = sparsity_stats(channels, channels, k, h, w, groups=g)  # validates the combination
            kernel = torch.randn(channels, channels // g, k, k, generator=gen)
            ax = plot_fc_kernel(kernel, h, w, groups=g, ax=axes[r, c], ticks=False)
            ax.set_title(f"K={k}, groups={g}\n{stats.density:.1%} nonzero", fontsize=9)
    fig.suptitle(f"FC kernel of a {channels}->{channels}-channel conv on {h}x{w}, 'same' padding (zeros white)")
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
    """The picture :func:`kernel_explorer` shows: a random conv's dense FC kernel, with its counts.

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


def _png(fig: Figure, colors: int | None = None) -> bytes:
    """The figure rendered to PNG bytes at :data:`FIGURE_DPI`, never wider than the book's column.

    ``colors``: reduce the picture to a palette of at most that many colours (about 3x smaller for
    the flat-coloured matrices drawn here); ``None`` keeps full RGBA. Same figure, same bytes.
    """
    dpi = min(FIGURE_DPI, COLUMN_WIDTH_IN * FIGURE_DPI / fig.get_figwidth())
    if colors is None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        return buffer.getvalue()
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = PILImage.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
    buffer = io.BytesIO()
    rgb.quantize(colors=colors).save(buffer, format="png", optimize=True)
    return buffer.getvalue()


def kernel_explorer() -> widgets.VBox | HTML:
    """Sliders for ``K``, padding, groups, ``h``, ``w``, ``C`` and ``O`` that redraw the FC kernel live.

    Layout: the controls, a status line (the counts of :class:`SparsityStats`, or the package's
    ``ValueError`` message when the combination is invalid), then the picture of :func:`explorer_figure`.
    The picture is a PNG, so it shows with any matplotlib backend and is kept in a saved notebook.

    For the HTML book (:func:`repmlp_lite.book.static_page`), where sliders could not move, it returns
    instead the picture of the default settings with its counts and a line saying where to run it.
    """
    defaults = {"kernel_size": 3, "groups": 1, "h": 4, "w": 4, "in_channels": 2, "out_channels": 2}
    # Before any widget exists: a widget created here would be saved in the static page's state.
    if static_page():
        fig, stats = explorer_figure(padding=None, **defaults)
        png = base64.b64encode(_png(fig)).decode("ascii")
        return HTML(
            '<p class="needs-kernel"><b>A live explorer</b>: its sliders redraw the picture with Python, '
            "so they need a running kernel: open this chapter in JupyterLab or Colab. Below, its picture "
            f"for the default settings.</p><p>{html.escape(stats.summary())}</p>"
            f'<img src="data:image/png;base64,{png}" alt="The FC kernel of a random conv with the '
            f'explorer\'s default settings: {html.escape(fig.axes[0].get_title())}">'
        )

    def slider(value: int, low: int, high: int) -> widgets.IntSlider:
        return widgets.IntSlider(value=value, min=low, max=high, continuous_update=False)

    controls = {  # keyed by explorer_figure's parameters
        "kernel_size": slider(defaults["kernel_size"], 1, 7),
        # string values: a saved (static) notebook shows a None-valued option as blank
        "padding": widgets.Dropdown(options=["same", "0", "1", "2", "3"], value="same"),
        "groups": slider(defaults["groups"], 1, 4),
        "h": slider(defaults["h"], 1, 8),
        "w": slider(defaults["w"], 1, 8),
        "in_channels": slider(defaults["in_channels"], 1, 6),
        "out_channels": slider(defaults["out_channels"], 1, 6),
    }
    names = ["K", "padding", "groups", "h", "w", "C (in)", "O (out)"]
    # Names in HTML widgets rather than in `description`: the static page's widget embedder
    # typesets descriptions with the MathJax 2 API, which throws on a page that uses MathJax 3.
    rows = [
        widgets.HBox([widgets.HTML(name, layout=widgets.Layout(width="70px")), control])
        for name, control in zip(names, controls.values())
    ]
    status = widgets.HTML()

    def draw(padding: str, **settings: int) -> None:
        try:
            fig, stats = explorer_figure(padding=None if padding == "same" else int(padding), **settings)
        except ValueError as error:
            status.value = f"<b>Not a valid conv:</b> {html.escape(str(error))}"
            clear_output()  # drop the last valid picture: it no longer matches the settings
            return
        status.value = html.escape(stats.summary())
        display(Image(data=_png(fig), format="png"))

    picture = widgets.interactive_output(draw, controls)
    return widgets.VBox([widgets.HBox([widgets.VBox(rows[:4]), widgets.VBox(rows[4:])]), status, picture])


# --- controls that work without a kernel: every picture drawn in advance ----------------------
#
# The static explorers below draw one picture per combination of their controls when the cell
# runs, and nest ipywidgets ``Stack`` s (one level per control) whose ``selected_index`` is linked
# to the control with ``jslink``. The links run in the browser, so the saved page (the HTML book)
# switches pictures with no Python behind it, and JupyterLab or Colab do the same.

# The choices of :func:`static_kernel_explorer`, in the order of its controls. Channels are
# ``C = O``; combinations no conv has (groups 4 with 2 channels, a kernel wider than the padded
# image) show the package's error message instead of a picture.
KERNEL_CHOICES: dict[str, tuple[int | str, ...]] = {
    "kernel_size": (1, 3, 5, 7),
    "groups": (1, 2, 4),
    "padding": ("same", 0),
    "hw": (3, 4, 6),
    "channels": (2, 4),
}
_PALETTE_COLORS = 256  # palette PNGs: a third of the bytes of RGBA ones for these pictures


@contextlib.contextmanager
def _book_defaults() -> Iterator[None]:
    """Matplotlib's defaults plus :data:`BOOK_STYLE`, whatever the caller set (e.g. Jupyter's inline
    backend makes figures transparent): the static explorers' pictures are the same bytes everywhere."""
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # keeps the backend
        use_book_style()
        yield


def explorer_png(kernel_size: int, groups: int, padding: int | str, hw: int, channels: int) -> bytes:
    """The PNG :func:`static_kernel_explorer` shows for one setting (byte for byte).

    :func:`explorer_figure` for a ``channels -> channels`` conv on ``hw x hw`` (``padding`` is
    ``"same"`` or an int), as a palette PNG at most the column wide. Raises ``ValueError`` for a
    combination no conv has.
    """
    with _book_defaults():
        fig, _ = explorer_figure(
            kernel_size, None if padding == "same" else int(padding), groups, hw, hw, channels, channels
        )
        return _png(fig, colors=_PALETTE_COLORS)


def _nested_stacks(
    choices: Sequence[Sequence[object]],
    leaf: Callable[[tuple[object, ...]], widgets.Widget],
    layout: widgets.Layout,
    chosen: tuple = (),
) -> tuple[widgets.Widget, list[list[widgets.Box]]]:
    """A tree of ``Stack`` s, one level per entry of ``choices``, with ``leaf(setting)`` at the bottom.

    Returns the root and, per level, all the stacks of that level (to link to that level's control).
    All stacks share ``layout``: one model in the saved state instead of one per stack.
    """
    if not choices:
        return leaf(chosen), []
    children, levels = [], [[] for _ in choices[1:]]
    for value in choices[0]:
        child, below = _nested_stacks(choices[1:], leaf, layout, (*chosen, value))
        children.append(child)
        for level, stacks in zip(levels, below):
            level.extend(stacks)
    stack = _Stack(children, selected_index=0, layout=layout)
    return stack, [[stack], *levels]


def setting_class(prefix: str, setting: dict[str, object]) -> str:
    """The CSS class of a static explorer's picture for ``setting``, e.g. ``"kx-kernel_size-3-groups-1"``."""
    return "-".join([prefix, *(f"{name}-{value}" for name, value in setting.items())])


def static_explorer(
    choices: dict[str, Sequence[object]],
    labels: dict[str, str],
    picture: Callable[..., tuple[bytes, str]],
    preferred: dict[str, object],
    css_prefix: str,
    invalid: str = "Not a valid conv",
) -> widgets.VBox:
    """Toggle buttons, one row per entry of ``choices``, that switch between pictures drawn now.

    Args:
        choices: the values of each control, keyed by ``picture``'s parameter names.
        labels: each control's label (shown beside it, as HTML).
        picture: ``picture(**setting) -> (png bytes, caption)`` for one setting; a ``ValueError``
            it raises is shown (as the caption, with no picture) for that setting.
        preferred: the setting to show first; a control whose preferred value is not among its
            choices starts at its first value.
        css_prefix: the class of the whole box; each picture also has the class
            :func:`setting_class` ``(css_prefix, setting)``.
        invalid: the words before the error message of a setting ``picture`` refuses.

    Returns:
        ``VBox([controls..., Stack tree])``: every picture is in the widget state, and each
        control's ``index`` is ``jslink`` ed to the ``selected_index`` of all stacks of its level.
    """
    names = list(choices)
    defaults = {name: preferred[name] if preferred[name] in values else values[0] for name, values in choices.items()}
    # Nest the longest choice lists innermost (fewest stacks), and share one layout and one
    # style between all the pictures' widgets: the saved state is then mostly the PNGs.
    nesting = sorted(names, key=lambda name: len(choices[name]))
    layout, style = widgets.Layout(), _HTMLStyle()
    image_layout = widgets.Layout(align_self="flex-start")  # natural size, not stretched to the box

    def leaf(values: tuple[object, ...]) -> widgets.Widget:
        setting = {name: dict(zip(nesting, values))[name] for name in names}
        try:
            png, caption = picture(**setting)
        except ValueError as error:
            message = f"<b>{html.escape(invalid)}:</b> {html.escape(str(error))}"
            return widgets.HTML(message, layout=layout, style=style)
        image = widgets.Image(value=png, format="png", layout=image_layout)
        image.add_class(setting_class(css_prefix, setting))
        text = widgets.HTML(html.escape(caption), layout=layout, style=style)
        return widgets.VBox([text, image], layout=layout)

    root, levels = _nested_stacks([choices[name] for name in nesting], leaf, layout)
    stacks_of = dict(zip(nesting, levels))
    rows = []
    for name in names:
        stacks = stacks_of[name]
        options = [(str(value), value) for value in choices[name]]
        control = widgets.ToggleButtons(options=options, value=defaults[name], style={"button_width": "64px"})
        control.add_class(f"{css_prefix}-{name}")
        for stack in stacks:
            stack.selected_index = control.index
            widgets.jslink((control, "index"), (stack, "selected_index"))
        rows.append(widgets.HBox([widgets.HTML(labels[name], layout=widgets.Layout(width="130px")), control]))
    box = widgets.VBox([*rows, root])
    box.add_class(css_prefix)
    return box


def static_kernel_explorer(choices: dict[str, Sequence[object]] | None = None) -> widgets.VBox:
    """Chapter 2's explorer for the HTML book: ``K``, groups, padding, ``h = w`` and ``C = O``.

    All :data:`KERNEL_CHOICES` combinations (or ``choices``) are drawn by :func:`explorer_png` when
    this runs (about 0.15 s each); the buttons only switch between them, so they work in the saved
    page with no kernel. Each picture has the CSS class ``setting_class("kx", setting)``.
    """
    choices = KERNEL_CHOICES if choices is None else choices

    def picture(**setting: int | str) -> tuple[bytes, str]:
        k, g, p, hw, c = (setting[name] for name in ("kernel_size", "groups", "padding", "hw", "channels"))
        stats = sparsity_stats(c, c, k, hw, hw, None if p == "same" else int(p), g)
        return explorer_png(**setting), stats.summary()

    labels = {
        "kernel_size": "kernel size K", "groups": "groups g", "padding": "padding p",
        "hw": "image h = w", "channels": "channels C = O",
    }
    preferred = {"kernel_size": 3, "groups": 1, "padding": "same", "hw": 4, "channels": 2}
    return static_explorer(choices, labels, picture, preferred, "kx")


def embedded_png_bytes(widget: widgets.Widget) -> tuple[int, int]:
    """``(pictures, bytes)``: the ``Image`` widgets in ``widget``'s tree and their PNG bytes in total.

    A saved page stores them base64-encoded, about 4/3 of these bytes.
    """
    count, total, todo = 0, 0, [widget]
    while todo:
        node = todo.pop()
        if isinstance(node, widgets.Image):
            count, total = count + 1, total + len(node.value)
        todo.extend(getattr(node, "children", ()))
    return count, total


# The choices of :func:`static_partition_explorer`: map size against partition size.
PARTITION_CHOICES: dict[str, tuple[int, ...]] = {"H": (4, 6, 8), "W": (4, 6, 8), "h": (2, 3, 4), "w": (2, 3, 4)}


def partition_png(H: int, W: int, h: int, w: int) -> bytes:
    """The PNG :func:`static_partition_explorer` shows for one setting (byte for byte).

    :func:`repmlp_lite.diagram.partition_diagram` as a palette PNG at most the column wide; the
    figure is closed afterwards. Raises ``ValueError`` when ``h``, ``w`` do not divide ``H``, ``W``.
    """
    from .diagram import partition_diagram  # here, not at the top: diagram imports viz

    with _book_defaults():
        fig = partition_diagram(H, W, h, w)
        try:
            return _png(fig, colors=_PALETTE_COLORS)
        finally:
            plt.close(fig)


def static_partition_explorer(choices: dict[str, Sequence[int]] | None = None) -> widgets.VBox:
    """Chapter 4's partition picture with buttons for ``H``, ``W``, ``h``, ``w``, working with no kernel.

    Every :data:`PARTITION_CHOICES` combination (or ``choices``) is drawn by :func:`partition_png`
    when this runs; each picture has the CSS class ``setting_class("px", setting)``.
    """
    choices = PARTITION_CHOICES if choices is None else choices

    def picture(H: int, W: int, h: int, w: int) -> tuple[bytes, str]:
        png = partition_png(H, W, h, w)
        return png, f"{H // h} x {W // w} = {H // h * (W // w)} partitions of {h} x {w} pixels"

    labels = {"H": "map height H", "W": "map width W", "h": "partition h", "w": "partition w"}
    preferred = {"H": 8, "W": 8, "h": 4, "w": 4}
    return static_explorer(choices, labels, picture, preferred, "px", invalid="Not a valid partition")
