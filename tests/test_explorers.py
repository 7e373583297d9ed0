"""The book's explorers (:mod:`repmlp_lite.explorers`): controls a reader moves, with or without a kernel.

* Drawn in advance, switched with ``jslink`` ed toggle buttons: chapter 2's kernel explorer
  (:func:`~repmlp_lite.explorers.static_kernel_explorer`) and chapter 4's partitions
  (:func:`~repmlp_lite.explorers.static_partition_explorer`). In Python: following the links from each
  control to its stacks reaches, for every setting, the picture :func:`~repmlp_lite.explorers.explorer_png`
  / :func:`~repmlp_lite.explorers.partition_png` draws for it (or the package's error message), and the
  PNGs are deterministic and no wider than the book's column. In the built page: clicking through every
  value of every control changes the shown picture to the very bytes the package draws for that setting
  (an error message where the package refuses it). A screenshot of each chapter-2 state the test visits
  is saved as ``_build/screenshots/02_explorer_<setting>.png``.
* Live: :func:`~repmlp_lite.explorers.kernel_explorer` shows the package's error for an impossible
  setting, and on the static page its default picture with a note.

The identity-trick explorer, the module's third kind, has its own tests: ``tests/test_identity_explorer.py``.

The browser parts (Chromium, driven by Playwright, served on 127.0.0.1 only; no console error and no
request leaving 127.0.0.1) use the book built by ``book_fixtures`` (``REUSE_BOOK_BUILD=1`` checks an
existing ``_build/html``). Where Chromium or Playwright is missing they are skipped, unless
``REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from urllib.parse import urljoin

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
from book_fixtures import LOCAL_HOST, SCREENSHOT_DIR, LocalPage, page_path  # noqa: E402
from ipywidgets.widgets.widget import _instances as widget_registry  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from repmlp_lite import book, explorers, style  # noqa: E402

COLUMN_PX = int(style.COLUMN_WIDTH_IN * style.FIGURE_DPI)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- in Python: the widget tree -------------------------------------------------------------


def _links_from(control: widgets.Widget) -> list[widgets.Stack]:
    """The stacks whose ``selected_index`` is jslinked to ``control.index`` (from ipywidgets' registry)."""
    stacks = []
    for link in list(widget_registry.values()):
        if isinstance(link, widgets.widgets.widget_link.Link) and link.source == (control, "index"):
            assert link.target[1] == "selected_index"
            stacks.append(link.target[0])
    return stacks


def _controls(box: widgets.VBox) -> dict[str, widgets.ToggleButtons]:
    rows = box.children[:-1]
    found = {}
    for row in rows:
        label, control = row.children
        assert isinstance(control, widgets.ToggleButtons)
        name = next(c for c in control._dom_classes)
        found[name] = control
    return found


def _shown(box: widgets.VBox, controls: dict[str, widgets.ToggleButtons], setting: dict) -> widgets.Widget:
    """Emulate the browser's links for ``setting`` and return the leaf the stacks then show."""
    for control in controls.values():
        stacks = _links_from(control)
        assert stacks, "a control linked to no stack"
        control_value = setting[control._dom_classes[0].split("-", 1)[1]]
        control.value = control_value
        for stack in stacks:
            stack.selected_index = control.index  # what the jslink does in the browser
    node = box.children[-1]
    while isinstance(node, widgets.Stack):
        node = node.children[node.selected_index]
    return node


def _all_settings(choices: dict) -> list[dict]:
    settings = [{}]
    for name, values in choices.items():
        settings = [{**s, name: v} for s in settings for v in values]
    return settings


def _check_tree(box, choices, draw, prefix):
    controls = _controls(box)
    assert len(controls) == len(choices)
    pictures = errors = 0
    for setting in _all_settings(choices):
        leaf = _shown(box, controls, setting)
        try:
            expected = draw(**setting)
        except ValueError as error:
            assert isinstance(leaf, widgets.HTML) and str(error).split(":")[0][:20] in leaf.value.replace("&#x27;", "'")
            errors += 1
            continue
        image = leaf.children[1]
        assert isinstance(image, widgets.Image)
        assert explorers.setting_class(prefix, setting) in image._dom_classes
        assert image.value == expected, f"{setting}: the stacks show another picture"
        pictures += 1
    return pictures, errors


def test_kernel_explorer_tree_reaches_the_package_picture_for_every_setting():
    choices = {"kernel_size": (1, 3), "groups": (1, 2), "padding": ("same", 0), "hw": (3,), "channels": (2, 4)}
    box = explorers.static_kernel_explorer(choices)
    pictures, errors = _check_tree(box, choices, explorers.explorer_png, "kx")
    assert pictures == 16 and errors == 0
    # an impossible setting shows the error, not a picture
    box = explorers.static_kernel_explorer({**choices, "groups": (4,), "channels": (2,), "kernel_size": (3,)})
    pictures, errors = _check_tree(box, {**choices, "groups": (4,), "channels": (2,), "kernel_size": (3,)},
                                   explorers.explorer_png, "kx")
    assert (pictures, errors) == (0, 2)


def test_partition_explorer_tree():
    choices = {"H": (4, 6), "W": (6,), "h": (2, 3), "w": (3,)}
    box = explorers.static_partition_explorer(choices)
    assert _check_tree(box, choices, explorers.partition_png, "px") == (3, 1)  # H=4, h=3 does not tile


def test_pictures_are_deterministic_and_fit_the_column():
    first, second = explorers.explorer_png(5, 2, "same", 6, 4), explorers.explorer_png(5, 2, "same", 6, 4)
    assert first == second
    assert first != explorers.explorer_png(5, 2, 0, 6, 4)
    for png in (first, explorers.partition_png(8, 8, 2, 2)):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert PILImage.open(io.BytesIO(png)).width <= COLUMN_PX


def test_pictures_ignore_the_callers_matplotlib_settings():
    # Jupyter's inline backend makes figures transparent and sets its own font size and dpi: the
    # pictures drawn in a notebook must still be the bytes drawn anywhere else.
    expected = explorers.explorer_png(3, 1, "same", 4, 2), explorers.partition_png(6, 6, 3, 2)
    inline = {"figure.facecolor": (1, 1, 1, 0), "font.size": 10, "figure.dpi": 72, "figure.figsize": (6, 4)}
    with matplotlib.rc_context(inline):
        assert (explorers.explorer_png(3, 1, "same", 4, 2), explorers.partition_png(6, 6, 3, 2)) == expected


def test_embedded_size_is_counted():
    box = explorers.static_partition_explorer({"H": (4,), "W": (4,), "h": (2, 3), "w": (2,)})
    count, total = explorers.embedded_png_bytes(box)
    assert count == 1 and total == len(explorers.partition_png(4, 4, 2, 2))


# --- the live explorer (a running kernel) ----------------------------------------------------


def controls_of(box):
    """The explorer's controls by their label (an HTML widget beside each), and its status line."""
    found, stack = {}, [box]
    while stack:
        widget = stack.pop()
        children = getattr(widget, "children", ())
        if len(children) == 2 and isinstance(children[1], (widgets.IntSlider, widgets.Dropdown)):
            found[children[0].value] = children[1]
        elif children:
            stack.extend(children)
        elif isinstance(widget, widgets.HTML):
            found["status"] = widget
    return found


def test_kernel_explorer_shows_errors_instead_of_raising():
    controls = controls_of(explorers.kernel_explorer())
    assert {"K", "padding", "groups", "h", "w", "C (in)", "O (out)", "status"} <= set(controls)
    status = controls["status"]
    assert "W is 32 x 32" in status.value  # default: C = O = 2, 4 x 4
    controls["groups"].value = 3
    assert "Not a valid conv" in status.value and "divisible by groups=3" in status.value
    controls["groups"].value = 2
    assert "W is 32 x 32" in status.value
    controls["K"].value = 4
    assert "even" in status.value
    controls["padding"].value = "1"
    assert "W is 18 x 32" in status.value  # K = 4, padding 1 on 4 x 4: a 3 x 3 output, O = 2


def test_kernel_explorer_on_a_static_page_is_its_default_picture_with_a_note(monkeypatch):
    monkeypatch.setenv(book.STATIC_PAGE_ENV, "1")
    shown = explorers.kernel_explorer()
    assert not isinstance(shown, widgets.Widget)
    assert 'class="needs-kernel"' in shown.data and "JupyterLab or Colab" in shown.data
    assert '<img src="data:image/png;base64,' in shown.data and "K=3, padding=same, groups=1" in shown.data
    monkeypatch.delenv(book.STATIC_PAGE_ENV)
    assert isinstance(explorers.kernel_explorer(), widgets.VBox)


# --- in the built book ----------------------------------------------------------------------


class Page(LocalPage):
    """A chapter page in Chromium, with its ipywidgets explorers' pictures and buttons."""

    def shown_picture(self, css_prefix: str):
        """``(class list, PNG bytes)`` of the one picture shown in the explorer, or ``(None, error text)``."""
        box = self.page.locator(f".{css_prefix}")
        images = box.locator("img.widget-image")
        visible = [images.nth(i) for i in range(images.count()) if images.nth(i).is_visible()]
        if not visible:
            texts = [t for t in box.locator(".widget-html-content").all_inner_texts() if "Not a valid" in t]
            return None, " ".join(texts)
        assert len(visible) == 1, f"{len(visible)} pictures shown at once"
        data = visible[0].evaluate(
            """async img => {
                const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
                let s = ''; for (const b of bytes) s += String.fromCharCode(b); return btoa(s);
            }"""
        )
        return visible[0].get_attribute("class").split(), base64.b64decode(data)

    def choose(self, css_prefix: str, name: str, value) -> None:
        buttons = self.page.locator(f".{css_prefix}-{name} button")
        buttons.filter(has_text=re.compile(rf"^\s*{re.escape(str(value))}\s*$")).first.click()

def _walk(settings: dict, choices: dict) -> list[tuple[str, object]]:
    """Every value of every control, one control at a time, ending each control back at its default."""
    steps = []
    for name, values in choices.items():
        for value in [*[v for v in values if v != settings[name]], settings[name]]:
            steps.append((name, value))
    return steps


def _label(setting: dict) -> str:
    return "_".join(f"{name}{value}" for name, value in setting.items())


def _click_through(page: Page, prefix: str, choices: dict, defaults: dict, draw, screenshots: bool):
    setting = dict(defaults)
    classes, shown = page.shown_picture(prefix)
    assert classes and explorers.setting_class(prefix, setting) in classes
    assert shown == draw(**setting), f"default {setting}: not the package's picture"
    visited, previous = [], shown
    for name, value in _walk(defaults, choices):
        page.choose(prefix, name, value)
        setting[name] = value
        try:
            expected = draw(**setting)
        except ValueError as error:
            expected, message = None, str(error)
        if expected is None:
            page.page.wait_for_function(
                f"() => Array.from(document.querySelectorAll('.{prefix} .widget-html-content'))"
                ".some(e => e.offsetParent !== null && e.innerText.includes('Not a valid'))"
            )
            classes, shown = page.shown_picture(prefix)
            assert classes is None and message.split(":")[0] in shown, f"{setting}: expected the error, got {shown!r}"
        else:
            wanted = explorers.setting_class(prefix, setting)
            page.page.locator(f"img.{wanted}").wait_for(state="visible")
            classes, shown = page.shown_picture(prefix)
            assert wanted in classes, f"{setting}: the picture shown is {classes}"
            assert shown == expected, f"{setting}: the shown bytes are not the package's picture"
            assert shown != previous, f"{setting}: the picture did not change"
            previous = shown
        visited.append(dict(setting))
        if screenshots:
            SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
            shot = SCREENSHOT_DIR / f"02_explorer_{_label(setting)}.png"
            page.page.locator(f".{prefix}").screenshot(path=str(shot))
    return visited


def test_chapter2_explorer_moves_in_the_static_page(chromium, server):
    page = Page(chromium, urljoin(server, "notebooks/02_seeing_the_kernel.html"))
    try:
        page.page.locator(".kx img.widget-image").first.wait_for(state="visible")
        defaults = {"kernel_size": 3, "groups": 1, "padding": "same", "hw": 4, "channels": 2}
        visited = _click_through(page, "kx", explorers.KERNEL_CHOICES, defaults, explorers.explorer_png, screenshots=True)
        assert len(visited) == sum(len(v) for v in explorers.KERNEL_CHOICES.values())
        assert not page.errors, "\n".join(page.errors)
        assert not page.outside, f"requests outside {LOCAL_HOST}: {page.outside}"
    finally:
        page.close()
    for setting in visited:
        shot = SCREENSHOT_DIR / f"02_explorer_{_label(setting)}.png"
        assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot


def test_chapter4_partitions_move_in_the_static_page(chromium, server):
    page = Page(chromium, urljoin(server, "notebooks/04_repmlp_block.html"))
    try:
        page.page.locator(".px img.widget-image").first.wait_for(state="visible")
        defaults = {"H": 8, "W": 8, "h": 4, "w": 4}
        _click_through(page, "px", explorers.PARTITION_CHOICES, defaults, explorers.partition_png, screenshots=False)
        assert not page.errors, "\n".join(page.errors)
        assert not page.outside, f"requests outside {LOCAL_HOST}: {page.outside}"
    finally:
        page.close()


def test_chapter2_page_weight(built_book):
    """The embedded pictures stay under 3 MB of the page (README states the measured size)."""
    html = page_path("notebooks/02_seeing_the_kernel").read_text(encoding="utf-8")
    state = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', html, re.S)
    assert state, "chapter 2 saved no widget state"
    assert len(state.group(1).encode()) < 3 * 1024 * 1024
