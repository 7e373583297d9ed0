"""The book's explorers: controls a reader moves, in the HTML book as in JupyterLab and Colab.

Three kinds, one module (the pictures they show are drawn by :mod:`repmlp_lite.viz` and
:mod:`repmlp_lite.diagram`):

* **Drawn in advance** (chapters 2 and 4): every picture is drawn when the cell runs, and nested
  ipywidgets ``Stack`` s (one level per control) switch between them, their ``selected_index``
  ``jslink`` ed to the control. The links run in the browser, so the saved page (the HTML book)
  switches pictures with no Python behind it. :func:`static_explorer` is the machinery;
  :func:`static_kernel_explorer` (pictures by :func:`explorer_png`) and
  :func:`static_partition_explorer` (pictures by :func:`partition_png`) use it;
  :func:`embedded_png_bytes` says what the pictures weigh.
* **Live** (chapter 2): :func:`kernel_explorer`, sliders that redraw the FC kernel with a running
  kernel; in the HTML book it stands in with its default picture.
* **The identity trick to touch** (chapter 2): :func:`identity_trick_explorer`, a small image and
  the FC kernel ``W(F, p)`` that :func:`~repmlp_lite.conv_as_fc.conv_to_fc` computes for it, as plain
  HTML; a small script (``identity_explorer.js``, with ``identity_explorer.css`` beside this module,
  both inlined in the HTML) only highlights what the pointer or the
  keyboard focus is on, so it works the same in the static page and in a notebook.
"""

from __future__ import annotations

import base64
import html
import itertools
import uuid
from collections.abc import Callable, Sequence
from importlib import resources

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, Image, clear_output, display

from ._checks import check_positive
from .book import static_page
from .conv_as_fc import conv_output_size, conv_to_fc
from .diagram import partition_diagram
from .style import COLUMN_WIDTH_IN, FIGURE_DPI, book_defaults, png_bytes
from .viz import explorer_figure, sparsity_stats

# ipywidgets 8 has Stack and HTMLStyle; ipywidgets 7 (still the default in some hosted notebooks)
# has neither: a Tab (whose selected_index works the same, with a tab bar) and the description style.
_Stack = getattr(widgets, "Stack", widgets.Tab)
try:
    from ipywidgets.widgets.widget_string import HTMLStyle as _HTMLStyle
except ImportError:  # ipywidgets 7
    _HTMLStyle = widgets.DescriptionStyle

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


def explorer_png(kernel_size: int, groups: int, padding: int | str, hw: int, channels: int) -> bytes:
    """The PNG :func:`static_kernel_explorer` shows for one setting (byte for byte).

    :func:`explorer_figure` for a ``channels -> channels`` conv on ``hw x hw`` (``padding`` is
    ``"same"`` or an int), as a palette PNG at most the column wide. Raises ``ValueError`` for a
    combination no conv has.
    """
    with book_defaults():
        fig, _ = explorer_figure(
            kernel_size, None if padding == "same" else int(padding), groups, hw, hw, channels, channels
        )
        return png_bytes(fig, colors=_PALETTE_COLORS)


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
        png = base64.b64encode(png_bytes(fig)).decode("ascii")
        return HTML(
            '<div class="live-explorer-stand-in"><p class="needs-kernel"><b>A live explorer</b>: its sliders redraw the picture with Python, '
            "so they need a running kernel: open this chapter in JupyterLab or Colab. Below, its picture "
            f"for the default settings.</p><p>{html.escape(stats.summary())}</p>"
            f'<img src="data:image/png;base64,{png}" alt="The FC kernel of a random conv with the '
            f'explorer\'s default settings: {html.escape(fig.axes[0].get_title())}"></div>'
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
        display(Image(data=png_bytes(fig), format="png"))

    picture = widgets.interactive_output(draw, controls)
    return widgets.VBox([widgets.HBox([widgets.VBox(rows[:4]), widgets.VBox(rows[4:])]), status, picture])


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
    with book_defaults():
        fig = partition_diagram(H, W, h, w)
        try:
            return png_bytes(fig, colors=_PALETTE_COLORS)
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


# --- the identity trick to touch (chapter 2) -------------------------------------------------

# The choices of :func:`identity_trick_explorer`: a one-channel conv's K and p (on 4 x 4 by default).
# A setting with no output (K = 5, p = 0 on 4 x 4) shows the package's error message instead.
IDENTITY_CHOICES: dict[str, tuple[int, ...]] = {"kernel_size": (1, 3, 5), "padding": (0, 1, 2)}
_IDENTITY_FILES = resources.files(__package__)  # identity_explorer.css and .js, inlined in the HTML
_EXPLORER_PX = int(COLUMN_WIDTH_IN * FIGURE_DPI)  # the explorer's widest: the book's column
_MATRIX_BOX_PX = (440, 520)  # the most W takes, (width, height), beside the images
_IMAGE_BOX_PX = 176  # the widest image grid
_TEXT_MIN_CELL_PX = 14  # smaller cells of W show colour only (the values show on the pixels)


def identity_trick_fc(kernel_size: int, padding: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`identity_trick_explorer` shows for one setting: ``(F, W)``.

    ``F`` is ``(1, 1, K, K)``, float64, with entries ``1, ..., K*K`` row by row, so each value names
    its place (``F[a, b] = a*K + b + 1``); ``W = conv_to_fc(F, h, w, padding)`` is ``(h'*w', h*w)``,
    so each nonzero of ``W`` names the kernel entry it copies. Raises ``ValueError`` (the package's
    message) for a setting with no output.
    """
    check_positive("kernel_size", kernel_size)
    kernel = torch.arange(1, kernel_size**2 + 1, dtype=torch.float64).reshape(1, 1, kernel_size, kernel_size)
    return kernel, conv_to_fc(kernel, h, w, padding)


def _grid(kind: str, cols: int, cell_px: int, cells: Sequence[str], label: str) -> str:
    """A CSS grid ``.itx-<kind>`` of ``cells`` (HTML, row by row), ``cols`` wide, square cells of ``cell_px``."""
    style = f"grid-template-columns:repeat({cols},{cell_px}px);grid-auto-rows:{cell_px}px"
    return (
        f'<div class="itx-grid itx-{kind}" data-cols="{cols}" role="group" aria-label="{label}" '
        f'style="{style}">{"".join(cells)}</div>'
    )


def _pixels(kind: str, rows: int, cols: int, cell_px: int) -> str:
    """An image's pixels, each named ``"<input|output> pixel (y, x)"``: pixel ``k`` is ``W``'s column (row) ``k``."""
    line = "column" if kind == "input" else "row"
    cells = [
        f'<span data-name="{kind} pixel ({y}, {x})" aria-label="{kind} pixel ({y}, {x}), {line} {k} of W"></span>'
        for k, (y, x) in enumerate(itertools.product(range(rows), range(cols)))
    ]
    return _grid(kind[:3] if kind == "input" else "out", cols, cell_px, cells, f"{kind} image, {rows} by {cols}")


def _titled(title: str, body: str) -> str:
    return f'<div><div class="itx-title">{html.escape(title)}</div>{body}</div>'


def _identity_panel(kernel_size: int, padding: int, h: int, w: int, shown: bool) -> str:
    """One ``(K, p)`` panel: the kernel, the input and output images and ``W``, as HTML (or the error)."""
    setting = f'class="itx-panel" data-setting="{kernel_size}-{padding}"{"" if shown else " hidden"}'
    try:
        kernel, fc = identity_trick_fc(kernel_size, padding, h, w)
    except ValueError as error:
        return f'<div {setting}><p class="itx-error"><b>Not a valid conv:</b> {html.escape(str(error))}</p></div>'
    out_h, out_w = conv_output_size(h, kernel_size, padding), conv_output_size(w, kernel_size, padding)
    rows, cols = fc.shape
    kernel_cells = [
        f'<span data-name="F[{a}, {b}]">{value:g}</span>'
        for (a, b), value in zip(itertools.product(range(kernel_size), repeat=2), kernel.flatten().tolist())
    ]
    matrix_cells = [f"<b>{value:g}</b>" if value else "<i></i>" for value in fc.flatten().tolist()]
    image_px = min(28, _IMAGE_BOX_PX // max(w, out_w, h, out_h))
    matrix_px = max(6, min(24, _MATRIX_BOX_PX[0] // cols, _MATRIX_BOX_PX[1] // rows))
    default = min(1, out_h - 1) * out_w + min(2, out_w - 1)  # output pixel (1, 2), or the nearest there is
    images = (
        _titled(f"kernel F, {kernel_size} x {kernel_size}",
                _grid("kernel", kernel_size, min(24, 120 // kernel_size), kernel_cells, "kernel F"))
        + _titled(f"input image, {h} x {w}", _pixels("input", h, w, image_px))
        + _titled(f"output image, {out_h} x {out_w}", _pixels("output", out_h, out_w, image_px))
    )
    matrix = _grid(
        "w" + (" itx-small" if matrix_px < _TEXT_MIN_CELL_PX else ""), cols, matrix_px, matrix_cells,
        f"W, {rows} rows by {cols} columns",
    )
    return (
        f'<div {setting} data-default="{default}"><div class="itx-images">{images}</div>'
        f"{_titled(f'W = conv_to_fc(F, {h}, {w}, padding={padding}): {rows} x {cols}', matrix)}</div>"
    )


def identity_trick_html(
    h: int = 4, w: int = 4, choices: dict[str, Sequence[int]] | None = None, preferred: tuple[int, int] = (3, 1)
) -> str:
    """The HTML of :func:`identity_trick_explorer`: a ``<style>``, the explorer, its ``<script>``.

    Args:
        h, w: the input image's size.
        choices: ``{"kernel_size": Ks, "padding": ps}``, by default :data:`IDENTITY_CHOICES`.
        preferred: ``(K, p)`` shown first; a value not among the choices starts at the first one.

    Every ``(K, p)`` panel is computed here by :func:`identity_trick_fc` and written as HTML (a
    panel has ``data-setting="K-p"``; its ``W`` is the grid ``.itx-w``, row by row, a ``<b>`` with
    the value for a nonzero, an empty ``<i>`` for a zero); ``identity_explorer.js`` only switches
    panels and highlights cells.
    """
    check_positive("h", h)
    check_positive("w", w)
    choices = IDENTITY_CHOICES if choices is None else choices
    labels = {"kernel_size": "kernel size K", "padding": "padding p"}
    if set(choices) != set(labels) or not all(choices.values()):
        raise ValueError(f"choices must give some values for exactly {sorted(labels)}, got {choices!r}")
    for kernel_size in choices["kernel_size"]:
        check_positive("kernel_size", kernel_size)
    if not all(isinstance(padding, int) and padding >= 0 for padding in choices["padding"]):
        raise ValueError(f"padding must be integers >= 0, got {choices['padding']!r}")
    start = {name: value if value in choices[name] else choices[name][0] for name, value in zip(labels, preferred)}
    root = f"itx-{uuid.uuid4().hex[:8]}"  # unique in a JupyterLab window that shows several notebooks
    controls = "".join(
        f'<div class="itx-row"><span id="{root}-{name}">{label}</span>'
        f'<span class="itx-choice" role="group" aria-labelledby="{root}-{name}">'
        + "".join(
            f'<button type="button" data-value="{value}" aria-pressed="{str(value == start[name]).lower()}">'
            f"{value}</button>"
            for value in choices[name]
        )
        + "</span></div>"
        for name, label in labels.items()
    )
    panels = "".join(
        _identity_panel(k, p, h, w, shown=(k, p) == (start["kernel_size"], start["padding"]))
        for k, p in itertools.product(choices["kernel_size"], choices["padding"])
    )
    description = (
        f"The FC kernel W of a one-channel conv on a {h} x {w} image, beside the kernel F and the input and "
        "output images: each row of W is an output pixel, each column an input pixel."
    )
    style = _IDENTITY_FILES.joinpath("identity_explorer.css").read_text(encoding="utf-8")
    script = _IDENTITY_FILES.joinpath("identity_explorer.js").read_text(encoding="utf-8")
    return (
        f"<style>{style}</style>"
        f'<div class="itx" id="{root}" style="max-width:{_EXPLORER_PX}px" role="group" '
        f'aria-label="{description}" aria-describedby="{root}-how">'
        f'<div class="itx-controls">{controls}</div>'
        f'<p class="itx-how" id="{root}-how">Point at, tap or Tab to a pixel of either image, an entry of W or '
        "of the kernel; the arrow keys move inside a grid.</p>"
        f'{panels}<p class="itx-readout" aria-live="polite"></p></div>'
        f'<script>{script}\nrepmlpIdentityExplorer(document.getElementById("{root}"));</script>'
    )


def identity_trick_explorer(
    h: int = 4, w: int = 4, choices: dict[str, Sequence[int]] | None = None, preferred: tuple[int, int] = (3, 1)
) -> HTML:
    """The identity trick to touch (chapter 2): a one-channel conv's images and its FC kernel, side by side.

    Buttons choose ``K`` and ``p``; pointing at (or focusing) an output pixel highlights its row of
    ``W``, the input pixels that row reads, each showing its weight, and the kernel entries used; an
    input pixel highlights its column and the output pixels it feeds (its one-hot response); an
    entry of ``W`` its two pixels and its kernel entry; a kernel entry its copies in ``W``. Plain HTML
    and a small script, with no kernel behind it: it works the same in the HTML book and, once the
    cell has run, in JupyterLab and Colab. Arguments as :func:`identity_trick_html`.
    """
    return HTML(identity_trick_html(h, w, choices, preferred))
