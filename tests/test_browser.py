"""The built book in a real browser: Chromium, driven by Playwright, on 127.0.0.1 only.

Every page is served from ``_build/html`` (the same build as ``test_book.py``) by a local HTTP
server and opened once; the checks below read that visit's record:

* no console error and no uncaught page error;
* no request leaves 127.0.0.1 (every request is recorded; outside ones are aborted and listed);
* math is typeset by MathJax (``mjx-container`` elements, no TeX errors);
* every image has loaded (``naturalWidth > 0``);
* chapter pages have the Colab launch link, and their "next" link leads to the next page;
* a page that carries saved widget state shows its widgets (sliders where it saved any);
* at a 1280 px window nothing scrolls sideways (outputs, code blocks, tables, equations), and every figure is
  shown at >= 75% of its natural width (figures are drawn for the column: ``repmlp_lite.viz``);
* every chapter has exercises, each followed by its solution, and links to other chapters.

The chapters are the notebooks listed in ``_toc.yml`` (:mod:`book_fixtures`), so a new chapter
is checked without editing this file.

A full-page screenshot of each page goes to ``_build/screenshots/<name>.png``.

Chromium is Debian's ``/usr/bin/chromium`` (``apt-get install chromium``); Playwright's own
browser download is not used. Where Chromium or Playwright is missing these tests are skipped,
unless ``REQUIRE_BROWSER=1`` (CI), which makes them fail instead.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from book_fixtures import CHAPTERS, LOCAL_HOST, PAGES, SCREENSHOT_DIR, colab_link, page_path

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1280, "height": 900}  # the window the layout checks are about
MIN_DISPLAYED_FRACTION = 0.75  # a figure is shown at least this fraction of its natural width

# Measured once the page has settled, in the 1280 px window:
# * overflow: every output area, <pre>, table, table wrapper or display equation of the article whose content is
#   wider than its box (it scrolls sideways), with both widths;
# * figures: every visible <img> of the article, natural and displayed width;
# * exercises: the sequence of exercise / hint admonitions and links to solutions (sections #sol-X-Y at the
#   chapter's end that exist on the page), in page order;
# * links: the article's links (not the sidebars or the previous/next footer), resolved.
LAYOUT_JS = """() => {
    const article = document.querySelector('article.bd-article') || document.querySelector('main');
    const describe = el => {
        const cls = typeof el.className === 'string' ? el.className : '';
        const text = (el.innerText || '').trim().replace(/\\s+/g, ' ').slice(0, 80);
        return `<${el.tagName.toLowerCase()} class="${cls.slice(0, 60)}"> ${text}`;
    };
    const boxes = article.querySelectorAll(
        '.cell_output, .cell_output .output, pre, table, .table-wrapper, .pst-scrollable-table-container, ' +
        'div.math, mjx-container[display="true"]');
    const overflow = [];
    for (const el of boxes) {
        if (el.offsetParent === null) continue;  // not displayed (e.g. a closed dropdown)
        if (el.scrollWidth > el.clientWidth + 1) {
            overflow.push({what: describe(el), scrollWidth: el.scrollWidth, clientWidth: el.clientWidth});
        }
    }
    const figures = [];
    for (const img of article.querySelectorAll('img')) {
        if (img.offsetParent === null || !img.naturalWidth) continue;
        figures.push({src: (img.currentSrc || img.src).slice(0, 100), natural: img.naturalWidth,
                      shown: img.getBoundingClientRect().width});
    }
    // a solution is the link from an exercise to its section at the chapter's end (#sol-X-Y) when that
    // section is on the page
    const solutionLink = a => a.tagName === 'A' && document.getElementById(a.hash.slice(1)) !== null;
    const exercises = Array.from(article.querySelectorAll('.admonition, a[href*="#sol-"]')).map(el =>
        el.tagName === 'A' ? (solutionLink(el) ? 'solution' : 'other') :
        el.classList.contains('exercise') ? 'exercise' : el.classList.contains('solution') ? 'solution' :
        el.classList.contains('hint') ? 'hint' : 'other').filter(k => k !== 'other');
    const links = Array.from(article.querySelectorAll('a[href]'))
        .filter(a => !a.closest('.prev-next-area, .prev-next-footer, nav'))
        .map(a => a.href.split('#')[0]);
    const h1 = article.querySelector('h1');
    const title = h1 ? h1.textContent.trim() : '';
    return {overflow, figures, exercises, links, title, width: article.clientWidth};
}"""


@dataclasses.dataclass
class Visit:
    url: str
    requests: list[str]
    outside: list[str]
    failed: list[str]
    console_errors: list[str]
    page_errors: list[str]
    math_nodes: int
    mjx_containers: int
    mjx_errors: list[str]
    images: list[dict]
    colab_links: list[str]
    next_href: str | None
    next_status: int | None
    has_widget_state: bool
    slider_models: int
    widget_views: int
    widgets_rendered: int
    sliders_rendered: int
    layout: dict
    screenshot: Path


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.hostname == LOCAL_HOST


def _visit(browser, base_url: str, page_name: str) -> Visit:
    url = urljoin(base_url, f"{page_name}.html")
    html = page_path(page_name).read_text(encoding="utf-8")
    has_widget_state = WIDGET_STATE in html
    slider_models = 0
    if has_widget_state:
        from bs4 import BeautifulSoup

        for script in BeautifulSoup(html, "html.parser").find_all("script", type=WIDGET_STATE):
            state = json.loads(script.string or "{}").get("state", {})
            slider_models += sum("Slider" in m.get("model_name", "") for m in state.values())

    requests: list[str] = []
    outside: list[str] = []
    failed: list[str] = []
    console_errors: list[str] = []
    page_errors: list[str] = []

    context = browser.new_context(viewport=VIEWPORT, service_workers="block")
    try:

        def route(r):
            if _is_local(r.request.url):
                r.continue_()
            else:  # never let it out; record it
                outside.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("request", lambda req: requests.append(req.url))
        page.on("requestfailed", lambda req: failed.append(f"{req.url} ({req.failure})"))
        page.on(
            "response",
            lambda resp: failed.append(f"{resp.url} (HTTP {resp.status})") if resp.status >= 400 else None,
        )
        page.on(
            "console",
            lambda msg: console_errors.append(f"{msg.text} @ {msg.location}") if msg.type == "error" else None,
        )
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))

        page.goto(url, wait_until="load")
        math_nodes = page.locator("main .math").count()
        if math_nodes:
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
            page.evaluate("() => MathJax.startup.promise")
        if has_widget_state:
            try:
                page.wait_for_selector(".jupyter-widgets", state="attached", timeout=30_000)
            except Exception:  # reported by test_widgets_render
                pass
        page.wait_for_load_state("networkidle")
        # Scroll through the page so that lazily loaded images load too, then wait for all images.
        page.evaluate(
            """async () => {
                for (let y = 0; y < document.body.scrollHeight; y += 800) {
                    window.scrollTo(0, y);
                    await new Promise(r => setTimeout(r, 20));
                }
                window.scrollTo(0, 0);
                await Promise.all(Array.from(document.images).map(img => img.complete ? null :
                    new Promise(r => { img.addEventListener('load', r); img.addEventListener('error', r); })));
            }"""
        )
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        screenshot = SCREENSHOT_DIR / f"{page_name.rsplit('/', 1)[-1]}.png"
        page.screenshot(path=str(screenshot), full_page=True)

        images = page.evaluate(
            "() => Array.from(document.images).map(i => ({src: (i.currentSrc || i.src).slice(0, 120),"
            " complete: i.complete, naturalWidth: i.naturalWidth}))"
        )
        mjx_containers = page.locator("mjx-container").count()
        mjx_errors = page.locator("mjx-merror").all_text_contents()
        colab_links = page.eval_on_selector_all(
            "a[href*='colab.research.google.com']", "els => els.map(e => e.getAttribute('href'))"
        )
        next_link = page.locator("a.right-next")
        next_href = next_link.first.get_attribute("href") if next_link.count() else None
        next_status = None
        if next_href:
            next_status = context.request.get(urljoin(url, next_href)).status
        widgets_rendered = page.locator(".jupyter-widgets").count()
        sliders_rendered = page.locator(".widget-slider").count()
        widget_views = page.locator("script[type='application/vnd.jupyter.widget-view+json']").count()
        layout = page.evaluate(LAYOUT_JS)
    finally:
        context.close()

    return Visit(
        url=url,
        requests=requests,
        outside=sorted(set(outside + [u for u in requests if not _is_local(u)])),
        failed=failed,
        console_errors=console_errors,
        page_errors=page_errors,
        math_nodes=math_nodes,
        mjx_containers=mjx_containers,
        mjx_errors=mjx_errors,
        images=images,
        colab_links=colab_links,
        next_href=next_href,
        next_status=next_status,
        has_widget_state=has_widget_state,
        slider_models=slider_models,
        widget_views=widget_views,
        widgets_rendered=widgets_rendered,
        sliders_rendered=sliders_rendered,
        layout=layout,
        screenshot=screenshot,
    )


@pytest.fixture(scope="session")
def visit(chromium, server):
    """``visit(page)``: the record of one visit to ``page``; each page is opened once per session."""
    cache: dict[str, Visit] = {}

    def get(page_name: str) -> Visit:
        if page_name not in cache:
            cache[page_name] = _visit(chromium, server, page_name)
        return cache[page_name]

    return get


# --- every page -----------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_no_request_leaves_localhost(visit, page):
    v = visit(page)
    assert v.requests, f"{page}: no request recorded at all"
    assert not v.outside, f"{page}: {len(v.outside)} request(s) to outside {LOCAL_HOST}:\n" + "\n".join(v.outside)


@pytest.mark.parametrize("page", PAGES)
def test_no_console_errors(visit, page):
    v = visit(page)
    problems = [f"console: {e}" for e in v.console_errors] + [f"page error: {e}" for e in v.page_errors]
    problems += [f"failed: {f}" for f in v.failed]
    assert not problems, f"{page}:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset(visit, page):
    v = visit(page)
    assert not v.mjx_errors, f"{page}: MathJax errors: {v.mjx_errors}"
    if page in CHAPTERS or v.math_nodes:
        assert v.math_nodes, f"{page}: the chapter has no math"
        assert v.mjx_containers >= v.math_nodes, (
            f"{page}: {v.math_nodes} math elements but only {v.mjx_containers} typeset by MathJax"
        )


@pytest.mark.parametrize("page", PAGES)
def test_images_loaded(visit, page):
    v = visit(page)
    broken = [i for i in v.images if not i["complete"] or i["naturalWidth"] <= 0]
    assert not broken, f"{page}: images not loaded: {broken}"
    if page in CHAPTERS:
        assert v.images, f"{page}: no image on the chapter page"


@pytest.mark.parametrize("page", PAGES)
def test_screenshot_saved(visit, page):
    shot = visit(page).screenshot
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- chapters -------------------------------------------------------------------------------


@pytest.mark.parametrize("page", CHAPTERS)
def test_colab_launch_link(visit, page):
    v = visit(page)
    assert colab_link(page) in v.colab_links, f"{page}: Colab links {v.colab_links}"


@pytest.mark.parametrize("page", PAGES[:-1])
def test_next_link_leads_to_the_next_page(visit, page):
    v = visit(page)
    expected = urljoin(v.url, "/" + PAGES[PAGES.index(page) + 1] + ".html")
    assert v.next_href, f"{page}: no 'next' link"
    target = urljoin(v.url, v.next_href).split("#")[0]
    assert target == expected, f"{page}: 'next' leads to {target}, expected {expected}"
    assert v.next_status == 200, f"{page}: 'next' target answered HTTP {v.next_status}"


@pytest.mark.parametrize("page", CHAPTERS)
def test_widgets_render(visit, page):
    v = visit(page)
    if not v.has_widget_state:
        return  # nothing saved, nothing to render
    assert v.widgets_rendered > 0, (
        f"{page}: saved widget state ({v.widget_views} views) but no widget rendered (.jupyter-widgets)"
    )
    if v.slider_models:
        assert v.sliders_rendered > 0, f"{page}: {v.slider_models} slider model(s) saved, none rendered"


def test_some_chapter_has_widgets(visit):
    """Chapter 2's sliders: at least one chapter must carry saved widget state that renders."""
    rendered = {p: visit(p).widgets_rendered for p in CHAPTERS if visit(p).has_widget_state}
    assert rendered, "no chapter saved any widget state"
    assert any(rendered.values()), f"widget state saved but nothing rendered: {rendered}"


# --- layout at the book's width (every page; chapters: exercises and links) ------------------


@pytest.mark.parametrize("page", PAGES)
def test_nothing_scrolls_sideways(visit, page):
    """No output, code block or table is wider than the column at a 1280 px window."""
    v = visit(page)
    wide = [f"{o['what']}: content {o['scrollWidth']} px in a {o['clientWidth']} px box" for o in v.layout["overflow"]]
    assert not wide, f"{page}: {len(wide)} element(s) scroll sideways:\n" + "\n".join(wide)


@pytest.mark.parametrize("page", PAGES)
def test_figures_shown_near_natural_size(visit, page):
    """A figure shrunk below 75% of its drawn width has labels too small to read: draw it narrower."""
    v = visit(page)
    small = [
        f"{f['src']}: {f['natural']} px drawn, shown at {f['shown']:.0f} px ({f['shown'] / f['natural']:.0%})"
        for f in v.layout["figures"]
        if f["shown"] < MIN_DISPLAYED_FRACTION * f["natural"]
    ]
    assert not small, (
        f"{page}: figures shown below {MIN_DISPLAYED_FRACTION:.0%} of their natural width "
        f"(the column is {v.layout['width']} px; draw at most COLUMN_WIDTH_IN):\n" + "\n".join(small)
    )
    if page in CHAPTERS:
        assert v.layout["figures"], f"{page}: no visible figure measured"


def _exercise_problems(sequence: list[str]) -> list[str]:
    """What is wrong with a page's exercise/hint/solution sequence: each exercise needs a solution
    after it and before the next exercise; a solution or hint belongs to the exercise before it."""
    problems = []
    current = None  # index of the open exercise, None before the first
    solved = True
    for kind in sequence:
        if kind == "exercise":
            if current is not None and not solved:
                problems.append(f"exercise {current + 1} has no solution")
            current = 0 if current is None else current + 1
            solved = False
        elif current is None:
            problems.append(f"a {kind} before any exercise")
        elif kind == "solution":
            solved = True
    if current is not None and not solved:
        problems.append(f"exercise {current + 1} has no solution")
    return problems


def test_exercise_rule_catches_missing_solutions():
    assert _exercise_problems(["exercise", "hint", "solution", "exercise", "solution"]) == []
    assert _exercise_problems(["exercise", "hint", "exercise", "solution"]) == ["exercise 1 has no solution"]
    assert _exercise_problems(["exercise"]) == ["exercise 1 has no solution"]
    assert _exercise_problems(["solution", "exercise", "solution"]) == ["a solution before any exercise"]


@pytest.mark.parametrize("page", CHAPTERS)
def test_every_exercise_has_a_solution(visit, page):
    """Exercises are ``.admonition.exercise``, each followed by a link to its solution's section.

    Every numbered chapter (title "N. ..." or "Nb. ...") has at least one; an unnumbered page in
    notebooks/ (an appendix) need not, but any exercise it has needs its solution too.
    """
    v = visit(page)
    sequence = v.layout["exercises"]
    if re.match(r"\d+[a-z]?\.", v.layout["title"]):  # a numbered chapter ("4. ..."), not an appendix
        assert "exercise" in sequence, f"{page}: no exercise (an admonition with :class: exercise)"
    problems = _exercise_problems(sequence)
    assert not problems, f"{page}: {problems} (admonitions in order: {sequence})"


@pytest.mark.parametrize("page", CHAPTERS)
def test_links_to_other_chapters(visit, page):
    """A chapter's text links to at least one other chapter ({doc} references)."""
    v = visit(page)
    here = urljoin(v.url, "/" + page + ".html")
    others = {urljoin(v.url, "/" + c + ".html") for c in CHAPTERS} - {here}
    linked = sorted({link for link in v.layout["links"] if link in others})
    assert linked, f"{page}: the text links to no other chapter"
