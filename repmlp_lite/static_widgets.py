"""Controls that work without a kernel: every picture drawn in advance (chapters 2 and 4).

The static explorers draw one picture per combination of their controls when the cell runs, and
nest ipywidgets ``Stack`` s (one level per control) whose ``selected_index`` is linked to the
control with ``jslink``. The links run in the browser, so the saved page (the HTML book) switches
pictures with no Python behind it, and JupyterLab or Colab do the same.

* :func:`static_explorer`: the machinery, for any ``picture(**setting) -> (png, caption)``;
* :func:`static_kernel_explorer` (chapter 2, pictures by :func:`explorer_png`) and
  :func:`static_partition_explorer` (chapter 4, pictures by :func:`partition_png`);
* :func:`embedded_png_bytes`: what the pictures weigh in the saved page.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt

from .diagram import partition_diagram
from .style import book_defaults, png_bytes
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
