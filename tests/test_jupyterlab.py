"""The chapters in JupyterLab with a live kernel, as a reader opens them: Chromium driven by Playwright.

A JupyterLab server (``jupyter lab --no-browser`` on 127.0.0.1, its own settings and workspace folders:
every cell rendered, ``windowingMode: "none"``, and no autosave, so the notebooks on disk stay without
outputs) opens chapters 2 and 4 and runs all their cells. Then, per chapter:

* no cell has an error output;
* the prose reads as in the book (jupyterlab-myst): no directive fence, option line or role in the
  rendered markdown, and the ``{eval}`` roles show values, not their names;
* nothing is requested from outside 127.0.0.1 (every request is routed; outside ones are aborted and
  listed);
* chapter 2's live explorer (``explorers.kernel_explorer``) draws a new picture when its K slider, then
  its groups slider, moves (the image bytes before and after differ);
* chapter 2's identity-trick explorer (``explorers.identity_trick_explorer``, HTML and a script in a cell's
  output) highlights what the pointer is on, and its buttons switch its matrix.

Screenshots go to ``_build/screenshots/jupyterlab-<chapter>.png``. Skipped where Chromium or Playwright
is missing, unless ``REQUIRE_BROWSER=1`` (the shared ``chromium`` fixture of :mod:`book_fixtures`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from book_fixtures import LOCAL_HOST, REPO, SCREENSHOT_DIR, local_only_context

# Seconds for opening a chapter and running all its cells (JUPYTERLAB_RUN_TIMEOUT overrides).
RUN_TIMEOUT_S = float(os.environ.get("JUPYTERLAB_RUN_TIMEOUT", "600"))
SETTLE_S = 20  # the longest wait for rendered markdown to stop changing after the run
EVAL = re.compile(r"\{eval\}`([^`]+)`")
SETTINGS = {
    # Render every cell, not only those in view: the checks read the whole notebook.
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # Never write the run's outputs into notebooks/ (they are committed without outputs).
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    # No "get notified about Jupyter news?" prompt over the screenshots (nor a news fetch).
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
}

# The open notebook's state, from JupyterLab's own models.
STATE_JS = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const cells = panel.content.widgets;
    const markdown = cells.filter(c => c.model.type === 'markdown').map(c => c.node.innerText);
    const errors = [];
    for (const c of cells) {
        if (c.model.type !== 'code') continue;
        for (const o of c.model.outputs.toJSON()) {
            if (o.output_type === 'error') errors.push(`${o.ename}: ${o.evalue}`);
        }
    }
    const unrun = cells.filter(c => c.model.type === 'code' && !c.model.executionCount).length;
    return {markdown, errors, unrun, status: panel.sessionContext.session?.kernel?.status};
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL_HOST, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(chromium, tmp_path_factory):
    """``(base_url, token)`` of a JupyterLab server rooted at the repository, for this module."""
    home = tmp_path_factory.mktemp("jupyterlab")
    for name, value in SETTINGS.items():
        path = home / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # inline figures, as a reader gets them
    env.pop("REPMLP_STATIC_PAGE", None)  # a live kernel: the live explorer
    env.update(
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    port, token = _free_port(), secrets.token_hex(16)
    log = open(home / "lab.log", "w")  # noqa: SIM115 - open for the server's lifetime
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--ip={LOCAL_HOST}",
         f"--port={port}", f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
         f"--ServerApp.root_dir={REPO}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://{LOCAL_HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(home / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


class Chapter:
    """One chapter opened in JupyterLab and run, with the record of the requests it made."""

    def __init__(self, browser, base: str, token: str, name: str) -> None:
        self.outside: list[str] = []
        self.context = local_only_context(browser, self.outside, viewport={"width": 1280, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(RUN_TIMEOUT_S * 1000)
        # A workspace of its own per chapter: JupyterLab restores a workspace's open tabs, and a tab
        # of the chapter opened before would become the current widget that Run All acts on.
        self.page.goto(f"{base}/lab/workspaces/{name}/tree/notebooks/{name}.ipynb?token={token}")
        start = time.monotonic()
        self.page.wait_for_function(
            "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            " return w && w.content && w.context && w.context.isReady && w.content.widgets.length > 0 &&"
            " w.sessionContext && w.sessionContext.session?.kernel?.status === 'idle'; }"
        )
        # Run All once the notebook's model and kernel are ready; the command's promise settles when
        # the last cell has run, or at the first cell that raises (run-all stops there).
        self.page.evaluate(
            "async () => { const w = window.jupyterapp.shell.currentWidget;"
            " await w.context.ready; await w.sessionContext.ready; await w.revealed;"
            " await window.jupyterapp.commands.execute('notebook:run-all-cells'); }"
        )
        self.page.wait_for_function(
            "() => { const w = window.jupyterapp.shell.currentWidget;"
            " return w.sessionContext.session.kernel.status === 'idle'; }",
            polling=500,
        )
        # jupyterlab-myst fills a markdown cell's {eval} roles from a kernel reply that can come after the
        # kernel went idle: read the state until two reads a second apart agree (at most SETTLE_S).
        self.state = self.page.evaluate(STATE_JS)
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            self.page.wait_for_timeout(1000)
            state, self.state = self.state, self.page.evaluate(STATE_JS)
            if state == self.state:
                break
        print(f"{name}: opened and ran in {time.monotonic() - start:.0f} s")

    def screenshot(self, name: str) -> None:
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOT_DIR / f"jupyterlab-{name}.png"))

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def run(chromium, lab):
    opened: dict[str, Chapter] = {}

    def get(name: str) -> Chapter:
        if name not in opened:
            opened[name] = Chapter(chromium, *lab, name)
        return opened[name]

    yield get
    for chapter in opened.values():
        chapter.close()


def _eval_names(name: str) -> list[str]:
    nb = json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())
    return [n for c in nb["cells"] if c["cell_type"] == "markdown" for n in EVAL.findall("".join(c["source"]))]


@pytest.mark.parametrize("name", ["02_seeing_the_kernel", "04_repmlp_block"])
def test_chapter_runs_and_reads_as_in_the_book(run, name):
    chapter = run(name)
    chapter.screenshot(name)
    state = chapter.state
    assert state["unrun"] == 0, f"{name}: {state['unrun']} code cells did not run"
    assert not state["errors"], f"{name}: error outputs: {state['errors']}"
    text = "\n".join(state["markdown"])
    raw = [m.group(0) for m in re.finditer(r"`{3,}\{\w+\}|^:class:.*$|:::\{\w+\}|\{(?:eval|doc|cite|eq|ref)\}`", text, re.M)]
    assert not raw, f"{name}: MyST source shown raw: {raw[:5]}"
    names = _eval_names(name)
    assert names, f"{name}: no {{eval}} role to check"
    shown_as_names = [n for n in names if re.search(rf"\b{re.escape(n)}\b", text)]
    assert not shown_as_names, f"{name}: {{eval}} roles shown as their names: {shown_as_names}"
    assert not chapter.outside, f"{name}: requests outside {LOCAL_HOST}: {chapter.outside[:5]}"


def test_figure_captions_show_below_their_figures(run):
    """JupyterLab shows no cell metadata, so each figure's caption is a markdown cell of its own."""
    nb = json.loads((REPO / "notebooks" / "04_repmlp_block.ipynb").read_text())
    figures = [c["metadata"]["mystnb"]["figure"] for c in nb["cells"] if "figure" in c["metadata"].get("mystnb", {})]
    text = "\n".join(run("04_repmlp_block").state["markdown"])
    numbers = re.findall(r"Fig\. (\d+):", text)
    assert len(numbers) == len(figures) > 0, f"captions shown: {numbers}, figures: {len(figures)}"


def test_chapter_2_values_are_filled_in(run):
    text = "\n".join(run("02_seeing_the_kernel").state["markdown"])
    assert re.search(r"once for every output pixel \(\d+ times\), a corner weight\s+only \d+ times", text), text[:3000]


def test_live_explorer_redraws_when_k_and_groups_move(run):
    chapter = run("02_seeing_the_kernel")
    page = chapter.page
    # The code cell whose output holds sliders: the live explorer (its only image is the picture).
    explorer = page.locator(".jp-CodeCell").filter(has=page.locator(".widget-hslider")).last
    explorer.scroll_into_view_if_needed(timeout=60_000)
    picture = explorer.locator("img").first

    def picture_bytes() -> str:
        return picture.get_attribute("src", timeout=60_000) or ""

    before = picture_bytes()
    assert before, "the live explorer shows no picture"
    sliders = explorer.locator(".widget-hslider")
    # Sliders in order: K (1 to 7, at 3), groups (1 to 4, at 1), h, w, C, O. A click on the track
    # moves the handle there (K to 5, groups to 2: a valid conv for C = O = 2).
    for index, what, fraction in [(0, "K", 4 / 6), (1, "groups", 1 / 3)]:
        old = picture_bytes()
        track = sliders.nth(index).locator(".noUi-target")
        track.scroll_into_view_if_needed(timeout=60_000)
        box = track.bounding_box(timeout=60_000)
        page.mouse.click(box["x"] + fraction * box["width"], box["y"] + box["height"] / 2)
        page.wait_for_function(
            "([el, old]) => { const img = el.querySelector('img'); return img && img.src && img.src !== old; }",
            arg=[explorer.element_handle(), old], timeout=120_000,
        )
        status = explorer.locator(".widget-html").last.inner_text()
        assert "Not a valid conv" not in status, f"after moving {what}: {status}"
    chapter.screenshot("02_seeing_the_kernel-explorer-moved")
    assert picture_bytes() != before
    assert not page.evaluate(STATE_JS)["errors"]
    assert not chapter.outside, f"requests outside {LOCAL_HOST}: {chapter.outside[:5]}"


def test_identity_trick_explorer_answers_the_pointer(run):
    chapter = run("02_seeing_the_kernel")
    page = chapter.page
    root = page.locator(".jp-OutputArea-output .itx").first
    root.scroll_into_view_if_needed(timeout=60_000)
    handle = root.element_handle()
    page.wait_for_function("root => root.dataset.shown === 'out-6'", arg=handle, timeout=60_000)
    visible = ".itx-panel:not([hidden])"
    for kind, index, words in [("inp", 5, "Input pixel (1, 1) is column 5 of W"),
                               ("out", 0, "Output pixel (0, 0) is row 0 of W")]:
        root.locator(f"{visible} .itx-{kind} > *").nth(index).hover()
        page.wait_for_function("([root, want]) => root.dataset.shown === want", arg=[handle, f"{kind}-{index}"])
        assert root.locator(".itx-readout").inner_text().startswith(words)
    root.locator('.itx-choice button[data-value="5"]').click()
    page.wait_for_function(
        "root => root.querySelector('.itx-panel:not([hidden])').dataset.setting === '5-1'", arg=handle
    )
    chapter.screenshot("02_seeing_the_kernel-identity-trick")
    assert not page.evaluate(STATE_JS)["errors"]
    assert not chapter.outside, f"requests outside {LOCAL_HOST}: {chapter.outside[:5]}"
