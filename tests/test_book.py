"""The built book, checked as HTML: every chapter executed, drawn, error-free and launchable.

The book is built once per session by :mod:`book_fixtures` (``jupyter-book build . -W -n
--keep-going``, warnings as errors); a failed build fails every test here with its log.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from book_fixtures import CHAPTERS, PAGES, REPO, build_book, colab_link, page_path
from bs4 import BeautifulSoup

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
VENDORED = [
    "_static/requirejs/require.js",
    "_static/jupyter-widgets/embed-amd.js",
    "_static/mathjax/tex-chtml-full.js",
    "_static/mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff",
]


def _soup(page: str) -> BeautifulSoup:
    return BeautifulSoup(page_path(page).read_text(encoding="utf-8"), "html.parser")


def _main(soup: BeautifulSoup):
    return soup.find("main") or soup.find(attrs={"role": "main"}) or soup.body


def _chapter_id(page: str) -> str:
    return page.rsplit("/", 1)[-1]


# --- configuration --------------------------------------------------------------------------


def test_toc_lists_every_notebook_and_only_existing_files():
    """``PAGES``/``CHAPTERS`` come from _toc.yml: it must list every notebook, and nothing missing."""
    notebooks = sorted(f"notebooks/{p.stem}" for p in (REPO / "notebooks").glob("*.ipynb"))
    assert sorted(CHAPTERS) == notebooks, f"_toc.yml lists {CHAPTERS}, notebooks/ holds {notebooks}"
    assert len(set(PAGES)) == len(PAGES), f"a page is listed twice: {PAGES}"
    for page in PAGES:
        sources = [REPO / f"{page}{suffix}" for suffix in (".md", ".ipynb")]
        assert any(s.is_file() for s in sources), f"_toc.yml lists {page}, which does not exist"
    assert PAGES[0] == "book/intro" and PAGES[-1] == "book/references"
    assert "book/notation" in PAGES, "the notation page is part of the book"


def test_every_built_chapter_is_checked(built_book):
    """The browser and HTML checks run over CHAPTERS: no chapter page may be built outside it."""
    built = sorted(f"notebooks/{p.stem}" for p in (built_book / "notebooks").glob("*.html"))
    assert built == sorted(CHAPTERS), f"built chapter pages {built}, checked {CHAPTERS}"


CODE_COLUMN = 88  # characters: book/_css/book.css sizes the code font so that this many fit
FOLDED_CODE_COLUMN = 85  # a folded cell's code ("hide-input") sits in a box 3% narrower


def _code_column(cell: dict) -> int:
    """How many characters a code cell's lines may have in the book: fewer in a folded cell."""
    return FOLDED_CODE_COLUMN if "hide-input" in cell["metadata"].get("tags", []) else CODE_COLUMN


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_code_lines_fit_the_code_column(chapter):
    """No code line is wider than the book's code column (it would scroll sideways), nor than the
    narrower box of a folded cell."""
    cells = json.loads((REPO / f"{chapter}.ipynb").read_text(encoding="utf-8"))["cells"]
    long = [
        f"cell {i}: {len(line)} chars (at most {_code_column(cell)}): {line[:60]}..."
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code"
        for line in "".join(cell["source"]).splitlines()
        if len(line) > _code_column(cell)
    ]
    assert not long, f"{chapter}: code lines wider than the code column:\n" + "\n".join(long)


CHAPTER_WORDS = 3000  # issue 25: a chapter that grows past this is split where its story splits (4 and 4b)


def prose_words(chapter: str) -> int:
    """Words of a chapter's prose: its markdown cells (exercises and solutions included), without the
    figure-caption cells (generated from the figures' metadata) and without code."""
    cells = json.loads((REPO / f"{chapter}.ipynb").read_text(encoding="utf-8"))["cells"]
    prose = [c for c in cells if c["cell_type"] == "markdown" and "figure-caption" not in c["metadata"].get("tags", [])]
    return sum(len("".join(c["source"]).split()) for c in prose)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_prose_stays_under_the_word_budget(chapter):
    """No chapter is over 3,000 words of prose: the engineering behind a measurement lives in the
    appendices, and a chapter with two stories is two chapters."""
    words = prose_words(chapter)
    assert 0 < words < CHAPTER_WORDS, f"{chapter} has {words} words of prose (budget {CHAPTER_WORDS})"


def test_word_count_leaves_out_captions_and_code(tmp_path, monkeypatch):
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Title\n", "two words"]},
        {"cell_type": "markdown", "metadata": {"tags": ["remove-cell", "figure-caption"]}, "source": ["*Fig. 1: a b c*"]},
        {"cell_type": "code", "metadata": {}, "source": ["x = 1  # not prose"]},
    ]
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "09_x.ipynb").write_text(json.dumps({"cells": cells}), encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert prose_words("notebooks/09_x") == 4


def test_config_executes_offline_with_local_assets():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "force"
    assert config["execute"]["allow_errors"] is False
    sphinx = config["sphinx"]["config"]
    assert sphinx["nb_execution_mode"] == "inline", "the prose's {eval} roles need inline execution"
    assert not sphinx.get("intersphinx_mapping"), "intersphinx fetches inventories over the network"
    assert "://" not in sphinx["mathjax_path"], "MathJax must come from the local copy"
    assert all("://" not in path for path in sphinx["nb_ipywidgets_js"]), "widget scripts must be local"
    for pattern in ["_build", ".pytest_cache", "**/.pytest_cache", "README.md", "tests", ".ci", "repmlp_lite"]:
        assert pattern in config["exclude_patterns"], pattern


# --- the build ------------------------------------------------------------------------------


def test_build_succeeds_with_warnings_as_errors(built_book):
    result = build_book()
    assert result.ok, result.failure_message()
    assert "build succeeded" in result.log or "[reused" in result.command


@pytest.mark.parametrize("page", PAGES)
def test_page_exists(built_book, page):
    assert page_path(page).is_file(), f"{page}.html missing from {built_book}"


def test_index_redirects_to_intro(built_book):
    assert "book/intro.html" in (built_book / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("asset", VENDORED)
def test_vendored_assets_are_served(built_book, asset):
    path = built_book / asset
    assert path.is_file() and path.stat().st_size > 0, f"{asset} missing from the built book"


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_no_external_script_or_stylesheet(built_book, page):
    soup = _soup(page)
    external = [tag.get("src") for tag in soup.find_all("script", src=True) if "//" in tag["src"]]
    external += [
        tag.get("href")
        for tag in soup.find_all("link", href=True)
        if "//" in tag["href"] and set(tag.get("rel") or []) & {"stylesheet", "preload", "modulepreload"}
    ]
    assert not external, f"{page} loads from outside the book: {external}"


@pytest.mark.parametrize("page", PAGES)
def test_scripts_included_once(built_book, page):
    soup = _soup(page)
    inline = [s.string for s in soup.find_all("script", src=False) if s.string and s.string.strip()]
    srcs = [s["src"].split("?")[0] for s in soup.find_all("script", src=True)]
    dup_inline = {s.strip()[:80] for s in inline if inline.count(s) > 1}
    dup_src = {s for s in srcs if srcs.count(s) > 1}
    assert not dup_inline and not dup_src, f"{page}: duplicated scripts {dup_inline | dup_src}"
    assert "THEBE_JS_URL" not in page_path(page).read_text(encoding="utf-8")


# --- the chapters ---------------------------------------------------------------------------


def _png_bytes(src: str, page_file: Path, html_dir: Path) -> bytes | None:
    """The image's bytes if ``src`` is a PNG (inline data or a file of the built book), else None."""
    if src.startswith("data:"):
        header, _, data = src.partition(",")
        if not header.startswith("data:image/png"):
            return None
        return base64.b64decode(data) if ";base64" in header else unquote(data).encode()
    path = urlsplit(src).path
    if not path.lower().endswith(".png"):
        return None
    target = (page_file.parent / unquote(path)).resolve()
    assert target.is_relative_to(html_dir.resolve()), f"image outside the book: {src}"
    assert target.is_file(), f"image file missing: {src} -> {target}"
    return target.read_bytes()


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_has_png_figures(built_book, page):
    soup = _soup(page)
    images = _main(soup).find_all("img")
    pngs = []
    for img in images:
        src = img.get("src") or ""
        assert src, f"{page}: <img> without src"
        if not src.startswith("data:"):
            target = (page_path(page).parent / unquote(urlsplit(src).path)).resolve()
            assert target.is_file() and target.stat().st_size > 0, f"{page}: image {src} missing or empty"
        data = _png_bytes(src, page_path(page), built_book)
        if data is not None:
            assert data.startswith(PNG_SIGNATURE), f"{page}: {src[:80]} is not a PNG"
            assert len(data) > len(PNG_SIGNATURE), f"{page}: {src[:80]} is empty"
            pngs.append(src)
    assert pngs, f"{page}: no PNG figure in the executed chapter ({len(images)} <img> elements)"


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_was_executed(built_book, page):
    outputs = _main(_soup(page)).select("div.cell_output")
    assert outputs, f"{page}: no cell output at all (was the notebook executed?)"


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_has_no_error_output(built_book, page):
    soup = _soup(page)
    main = _main(soup)
    errors = main.select(".output.traceback, .output.error, div.traceback, .nb-error")
    assert not errors, f"{page}: cell error output:\n" + "\n---\n".join(e.get_text()[:2000] for e in errors)
    stderr = [e.get_text() for e in main.select(".output.stderr")]
    bad = [s for s in stderr if "Traceback" in s or re.search(r"^\w*Error\b", s, re.M)]
    assert not bad, f"{page}: stderr with a traceback or error:\n" + "\n---\n".join(b[:2000] for b in bad)


@pytest.mark.parametrize("page", PAGES)
def test_no_traceback_anywhere(built_book, page):
    html = page_path(page).read_text(encoding="utf-8")
    assert "Traceback" not in BeautifulSoup(html, "html.parser").get_text(), f"{page}: 'Traceback' in the page text"
    assert "Traceback (most recent call last)" not in html, f"{page}: a traceback in the page source"


@pytest.mark.parametrize("page", CHAPTERS)
def test_saved_widget_outputs_have_no_errors(built_book, page):
    soup = _soup(page)
    for script in soup.find_all("script", type=WIDGET_STATE):
        state = json.loads(script.string or "{}")
        for model_id, model in state.get("state", {}).items():
            for output in model.get("state", {}).get("outputs", []) or []:
                assert output.get("output_type") != "error", (
                    f"{page}: widget {model_id} saved an error: {output.get('ename')}: {output.get('evalue')}"
                )


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_has_colab_launch_link(built_book, page):
    expected = colab_link(page)
    links = [a["href"] for a in _soup(page).find_all("a", href=True) if "colab.research.google.com" in a["href"]]
    assert expected in links, f"{page}: no Colab launch link {expected} (found {links})"


def test_kernel_backed_explorer_is_a_picture_with_a_note(built_book):
    """Chapter 2's live explorer (``explorers.kernel_explorer``) would need a kernel: the book shows its
    default picture and says where it runs, and no slider of it is saved in the page."""
    soup = _soup("notebooks/02_seeing_the_kernel")
    notes = _main(soup).select("p.needs-kernel")
    assert len(notes) == 1, f"{len(notes)} notes for the kernel-backed explorer"
    assert "JupyterLab or Colab" in notes[0].get_text(" ")
    picture = notes[0].find_next("img")
    assert picture is not None and picture["src"].startswith("data:image/png;base64,")
    assert picture["alt"].startswith("The FC kernel"), picture["alt"]
    sliders = [
        model_id
        for script in soup.find_all("script", type=WIDGET_STATE)
        for model_id, model in json.loads(script.string or "{}").get("state", {}).items()
        if model.get("model_name") == "IntSliderModel"
    ]
    assert not sliders, f"sliders saved in the static page: {sliders}"


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_has_a_title(built_book, page):
    h1 = _main(_soup(page)).find("h1")
    assert h1 is not None and h1.get_text(strip=True), f"{page}: no <h1> title"


# --- the prose pages ------------------------------------------------------------------------


def test_references_page_lists_every_bib_entry(built_book):
    bib = (REPO / "book" / "references.bib").read_text(encoding="utf-8")
    keys = re.findall(r"@\w+\{([^,\s]+),", bib)
    assert len(keys) >= 6, keys
    entries = _main(_soup("book/references")).select("div.citation")
    assert len(entries) == len(keys), f"{len(entries)} bibliography entries for {len(keys)} bib keys"
    text = " ".join(e.get_text(" ") for e in entries).lower()
    for words in ["repmlp", "repmlpnet", "repvgg", "acnet", "deep residual learning", "batch normalization"]:
        assert words in text, f"references page lacks {words!r}"


def test_intro_has_the_readme_commands(built_book):
    code = "\n".join(pre.get_text() for pre in _soup("book/intro").find_all("pre"))
    assert "python3 -m pip install -r requirements.txt && jupyter-book build . -W -n --keep-going" in code
    assert "python3 -m pip install -r requirements.txt && python3 -m pytest" in code


@pytest.mark.parametrize("page", ["book/reading_guide"])
def test_prose_math_is_marked_for_mathjax(built_book, page):
    main = _main(_soup(page))
    assert main.select(".math"), f"{page}: no math for MathJax"


# Text left in the prose when a role or a glued number did not resolve (MyST shows an unparsed
# role as its source, e.g. "{glue:}`acc`" inside raw HTML), or when a writer left a gap to fill.
PLACEHOLDERS = {
    "an unresolved role": re.compile(r"\{(?:glue(?::\w*)?|eval|doc|eq|ref|numref|cite(?::\w*)?)\}"),
    "a to-do marker": re.compile(r"\b(?:TODO|FIXME|TBD|XXX)\b"),
    "an unresolved reference (??)": re.compile(r"\?\?"),
    "a number to fill in": re.compile(r"\b(?:[xX]\.[xX]{1,4}|N\.NN|0\.XX|\d+\.\?+)\b"),
}


def _prose(page: str) -> str:
    """The page's article text without code, cell inputs and outputs, or math."""
    main = _main(_soup(page))
    for tag in main.select("pre, code, script, style, .cell_input, .cell_output, .math, mjx-container, nav"):
        tag.decompose()
    return main.get_text(" ")


@pytest.mark.parametrize("page", PAGES)
def test_prose_has_no_unglued_placeholder(built_book, page):
    text = _prose(page)
    assert len(text.split()) > 20, f"{page}: almost no prose found ({text[:200]!r})"
    found = [
        f"{what}: ...{text[max(m.start() - 60, 0):m.end() + 60]!r}..."
        for what, pattern in PLACEHOLDERS.items()
        for m in pattern.finditer(text)
    ]
    assert not found, f"{page}: placeholder text in the prose:\n" + "\n".join(found)


def test_placeholder_patterns_catch_what_they_name():
    for sample in ["see {glue:}`acc`", "{eval}`acc`", "{doc}`x`", "TODO: fill", "Eq. (??)", "accuracy 0.XX", "x.xx ms"]:
        assert any(p.search(sample) for p in PLACEHOLDERS.values()), sample
    for sample in ["accuracy 0.9531 after 8 epochs", "the {1, 3, 5} kernels", "x.shape", "N.B."]:
        assert not any(p.search(sample) for p in PLACEHOLDERS.values()), sample
