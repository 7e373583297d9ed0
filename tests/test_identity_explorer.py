"""The identity trick to touch (:func:`repmlp_lite.explorers.identity_trick_explorer`, chapter 2).

A one-channel conv's kernel, input and output images and FC kernel ``W``, written into the page as HTML
for every ``(K, p)`` offered, with a small script that only highlights. Checked here:

* in Python: the page holds ``conv_to_fc``'s matrix, value for value, for every setting (the package's
  error message where a setting has no output), starts at the preferred setting, and loads nothing (no
  address, no file: the script and the style are inline); bad arguments are refused by name;
* in the built chapter (Chromium, driven by Playwright, served on 127.0.0.1 only): for every setting,
  pointing at output pixels highlights exactly the row of ``W``, the input pixels it reads with their
  weights and the kernel entries used; pointing at input pixels the column and the output pixels it
  feeds; an entry of ``W`` its two pixels and its kernel entry; a kernel entry its copies; the arrow keys
  move the highlight as the pointer does; no console error, no request leaving 127.0.0.1. Screenshots
  go to ``_build/screenshots/02_identity_*.png``. The explorer is the numbered, captioned figure
  ``fig-ch2-touch`` with an accessible description.

The browser part uses the book built by ``book_fixtures`` (``REUSE_BOOK_BUILD=1`` checks an existing
``_build/html``); where Chromium or Playwright is missing it is skipped, unless ``REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import itertools
import re
from urllib.parse import urljoin

import pytest
import torch
from book_fixtures import LOCAL_HOST, SCREENSHOT_DIR, LocalPage, page_path
from bs4 import BeautifulSoup

from repmlp_lite import conv_to_fc, explorers

# --- in Python ---------------------------------------------------------------------------------


def numbered_kernel_fc(kernel_size: int, padding: int, h: int, w: int) -> torch.Tensor:
    """``conv_to_fc`` of the one-channel kernel with entries ``1, ..., K*K``: what the explorer must show."""
    kernel = torch.arange(1.0, kernel_size**2 + 1, dtype=torch.float64).reshape(1, 1, kernel_size, kernel_size)
    return conv_to_fc(kernel, h, w, padding)


def _matrix_in(panel) -> torch.Tensor:
    """The ``W`` a panel of the explorer's HTML shows, read back from its cells."""
    grid = panel.select_one(".itx-w")
    values = [float(cell.get_text()) if cell.name == "b" else 0.0 for cell in grid.find_all(recursive=False)]
    cols = int(grid["data-cols"])
    assert len(values) % cols == 0
    return torch.tensor(values, dtype=torch.float64).reshape(-1, cols)


def test_identity_trick_page_holds_conv_to_fc_for_every_setting():
    h, w, choices = 4, 5, {"kernel_size": (1, 3, 5), "padding": (0, 2)}
    markup = explorers.identity_trick_html(h, w, choices, preferred=(3, 2))
    soup = BeautifulSoup(markup, "html.parser")
    panels = {panel["data-setting"]: panel for panel in soup.select(".itx-panel")}
    assert sorted(panels) == sorted(f"{k}-{p}" for k, p in itertools.product(*choices.values()))
    assert [name for name, panel in panels.items() if not panel.has_attr("hidden")] == ["3-2"]
    pressed = [button["data-value"] for button in soup.select('.itx-choice button[aria-pressed="true"]')]
    assert pressed == ["3", "2"]
    shown = 0
    for k, p in itertools.product(*choices.values()):
        panel = panels[f"{k}-{p}"]
        try:
            expected = numbered_kernel_fc(k, p, h, w)
        except ValueError as error:  # K = 5, p = 0 on 4 x 5: no output
            assert panel.select_one(".itx-w") is None and str(error) in panel.get_text()
            continue
        assert torch.equal(_matrix_in(panel), expected), f"K={k}, p={p}: the page's W is not conv_to_fc's"
        out_h, out_w = h + 2 * p - k + 1, w + 2 * p - k + 1
        assert [float(c.get_text()) for c in panel.select(".itx-kernel > span")] == list(range(1, k * k + 1))
        assert len(panel.select(".itx-inp > span")) == h * w and len(panel.select(".itx-out > span")) == out_h * out_w
        assert panel.select(".itx-out > span")[int(panel["data-default"])]["data-name"] == (
            f"output pixel ({min(1, out_h - 1)}, {min(2, out_w - 1)})"
        )
        shown += 1
    assert shown == 5
    # nothing to load: no address, no file, the script and the style inline
    assert "://" not in markup and not soup.find_all(src=True) and not soup.find_all("link")
    assert len(soup.find_all("script")) == 1 and "repmlpIdentityExplorer(document.getElementById" in markup


def test_identity_trick_refuses_bad_arguments_by_name():
    for kwargs, message in [
        ({"h": 0}, "h must be a positive integer"),
        ({"choices": {"kernel_size": (3,)}}, "choices must give some values"),
        ({"choices": {"kernel_size": (0, 3), "padding": (1,)}}, "kernel_size must be a positive integer"),
        ({"choices": {"kernel_size": (3,), "padding": (-1,)}}, "padding must be integers >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            explorers.identity_trick_html(**kwargs)




# --- in the built book -------------------------------------------------------------------------

# What the identity explorer shows now: per grid of the visible panel, the indices of the cells
# marked "hit" (highlighted), "band" (W's row or column) and "at" (what is pointed at), and the
# numbers written on the pixels.
IDENTITY_STATE_JS = """root => {
    const panel = root.querySelector('.itx-panel:not([hidden])');
    const state = {setting: panel.dataset.setting, shown: root.dataset.shown || null,
                   readout: root.querySelector('.itx-readout').textContent};
    for (const kind of ['kernel', 'inp', 'out', 'w']) {
        const grid = panel.querySelector('.itx-' + kind);
        if (!grid) continue;
        const cells = Array.from(grid.children);
        for (const mark of ['hit', 'band', 'at']) {
            state[kind + '_' + mark] = cells.flatMap((c, i) => c.classList.contains('itx-' + mark) ? [i] : []);
        }
        state[kind + '_text'] = cells.map(c => c.textContent);
    }
    return state;
}"""


def _label_of(value: float) -> str:
    return f"{value:g}"


class IdentityExplorer:
    """Chapter 2's identity-trick explorer in a page: point at its cells, read what it highlights."""

    def __init__(self, page: LocalPage):
        self.page = page.page
        self.root = self.page.locator(".itx").first
        self.root.wait_for(state="visible")

    def state(self) -> dict:
        return self.root.evaluate(IDENTITY_STATE_JS)

    def cell(self, kind: str, index: int):
        return self.root.locator(f".itx-panel:not([hidden]) .itx-{kind} > *").nth(index)

    def point(self, kind: str, index: int) -> dict:
        before = self.root.get_attribute("data-shown")
        self.cell(kind, index).hover()
        if before != f"{kind}-{index}":
            self.page.wait_for_function(
                "([root, want]) => root.dataset.shown === want", arg=[self.root.element_handle(), f"{kind}-{index}"]
            )
        return self.state()

    def choose(self, kernel_size: int, padding: int) -> dict:
        for group, value in enumerate((kernel_size, padding)):
            self.root.locator(".itx-choice").nth(group).locator(f'button[data-value="{value}"]').click()
        self.page.wait_for_function(
            "([root, want]) => root.querySelector('.itx-panel:not([hidden])').dataset.setting === want",
            arg=[self.root.element_handle(), f"{kernel_size}-{padding}"],
        )
        return self.state()


def _check_row(state: dict, fc: torch.Tensor, r: int) -> None:
    """Output pixel ``r``: its row of ``W``, the input pixels the row reads with their weights, the taps."""
    rows, cols = fc.shape
    read = [c for c in range(cols) if fc[r, c] != 0]
    assert state["w_band"] == list(range(r * cols, (r + 1) * cols)), f"row {r}: W's row not banded"
    assert state["w_hit"] == [r * cols + c for c in read]
    assert state["out_at"] == [r] and state["inp_hit"] == read
    assert state["inp_text"] == [_label_of(fc[r, c]) if c in read else "" for c in range(cols)]
    assert state["kernel_hit"] == sorted(int(fc[r, c]) - 1 for c in read)


def _check_column(state: dict, fc: torch.Tensor, c: int) -> None:
    """Input pixel ``c``: its column of ``W``, the output pixels it feeds with their weights."""
    rows, cols = fc.shape
    fed = [r for r in range(rows) if fc[r, c] != 0]
    assert state["w_band"] == [r * cols + c for r in range(rows)], f"column {c}: W's column not banded"
    assert state["w_hit"] == [r * cols + c for r in fed]
    assert state["inp_at"] == [c] and state["out_hit"] == fed
    assert state["out_text"] == [_label_of(fc[r, c]) if r in fed else "" for r in range(rows)]


def test_identity_trick_highlights_what_conv_to_fc_says_in_the_static_page(chromium, server):
    page = LocalPage(chromium, urljoin(server, "notebooks/02_seeing_the_kernel.html"))
    try:
        explorer = IdentityExplorer(page)
        h = w = 4
        start = explorer.state()
        # at load: output pixel (1, 2) of K = 3, p = 1 (the matrix of the chapter's first figure)
        assert start["setting"] == "3-1" and start["shown"] == "out-6"
        _check_row(start, numbered_kernel_fc(3, 1, h, w), 6)
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        explorer.root.screenshot(path=str(SCREENSHOT_DIR / "02_identity_K3_p1_output6.png"))
        pointed = 0
        for k, p in itertools.product(*explorers.IDENTITY_CHOICES.values()):
            state = explorer.choose(k, p)
            try:
                fc = numbered_kernel_fc(k, p, h, w)
            except ValueError as error:
                text = explorer.root.locator(".itx-panel:not([hidden])").inner_text()
                assert str(error) in text and state["readout"] == "", f"K={k}, p={p}: {text!r}"
                continue
            rows, cols = fc.shape
            previous = None
            for r in sorted({0, rows // 2 + 1, rows - 1}):
                state = explorer.point("out", r)
                _check_row(state, fc, r)
                assert state != previous, f"K={k}, p={p}: pointing at output pixel {r} changed nothing"
                assert state["readout"].startswith("Output pixel ") and f"row {r} of W" in state["readout"]
                previous = state
            for c in (0, 5, cols - 1):
                state = explorer.point("inp", c)
                _check_column(state, fc, c)
                assert state != previous and f"column {c} of W" in state["readout"]
                previous = state
            # an entry of W: its two pixels; a kernel entry: all its copies in W
            r, c = rows // 2, cols // 2
            state = explorer.point("w", r * cols + c)
            assert state["w_at"] == [r * cols + c] and state["out_at"] == [r] and state["inp_at"] == [c]
            assert state["kernel_hit"] == ([int(fc[r, c]) - 1] if fc[r, c] else [])
            t = k * k // 2  # the kernel's centre
            state = explorer.point("kernel", t)
            copies = [i for i, value in enumerate(fc.flatten().tolist()) if value == t + 1]
            assert state["kernel_at"] == [t] and state["w_hit"] == copies
            assert f"copied into {len(copies)} entries of W" in state["readout"]
            pointed += 1
            if (k, p) == (1, 2):
                explorer.root.screenshot(path=str(SCREENSHOT_DIR / "02_identity_K1_p2_kernel.png"))
        assert pointed == len(explorers.IDENTITY_CHOICES["kernel_size"]) * len(explorers.IDENTITY_CHOICES["padding"]) - 1
        # the keyboard: Tab lands on a grid's cell, the arrow keys move inside it
        explorer.choose(3, 1)
        explorer.cell("inp", 0).focus()
        page.page.wait_for_function("root => root.dataset.shown === 'inp-0'", arg=explorer.root.element_handle())
        for key, shown in [("ArrowRight", "inp-1"), ("ArrowDown", "inp-5"), ("ArrowLeft", "inp-4"), ("ArrowUp", "inp-0")]:
            page.page.keyboard.press(key)
            page.page.wait_for_function("([root, want]) => root.dataset.shown === want",
                                        arg=[explorer.root.element_handle(), shown])
        _check_column(explorer.state(), numbered_kernel_fc(3, 1, h, w), 0)
        explorer.point("inp", 6)
        explorer.root.screenshot(path=str(SCREENSHOT_DIR / "02_identity_K3_p1_input6.png"))
        assert not page.errors, "\n".join(page.errors)
        assert not page.outside, f"requests outside {LOCAL_HOST}: {page.outside}"
    finally:
        page.close()


def test_identity_trick_is_a_numbered_figure_with_a_caption(built_book):
    soup = BeautifulSoup(page_path("notebooks/02_seeing_the_kernel").read_text(encoding="utf-8"), "html.parser")
    explorers_on_page = soup.select(".itx")
    assert len(explorers_on_page) == 1
    figure = explorers_on_page[0].find_parent("figure")
    assert figure is not None and figure.get("id") == "fig-ch2-touch", "the explorer is not the figure fig-ch2-touch"
    caption = figure.find("figcaption")
    assert caption is not None and re.match(r"Fig\. \d+", caption.find(class_="caption-number").get_text(strip=True))
    assert "identity trick" in caption.get_text(" ")
    assert len(explorers_on_page[0]["aria-label"].split()) >= 8, "the explorer has no accessible description"
