"""Figures a reader can cite: every figure numbered, captioned, described, and referenced.

Two kinds of check:

* static, on the notebooks (fast, no build): every code cell that draws a figure carries myst-nb's
  figure metadata (``mystnb.figure.caption``, ``mystnb.figure.name`` and ``mystnb.image.alt``),
  names are unique across the book and carry their chapter (``fig-ch4-...``), every figure is
  referenced by ``{numref}`` in its chapter's text and every ``{numref}`` names a figure;
* on the built HTML (the session's one build, :mod:`book_fixtures`): every picture on a chapter
  page, and on the introduction, lies inside a numbered ``<figure>`` with a caption reading
  "Fig. N" and a descriptive ``alt`` text (not a file name). Pictures inside saved widgets (the
  explorers of chapters 2 and 4) are controls, not figures, and are skipped.
"""

from __future__ import annotations

import json
import re

import pytest
from book_fixtures import CHAPTERS, REPO, page_path
from bs4 import BeautifulSoup

# A cell draws a figure when it shows one with pyplot or calls a function that returns one (the
# identity-trick explorer is a figure too: HTML that myst-nb numbers and captions like a picture).
FIGURE_CALL = re.compile(
    r"plt\.show\(\)|\b\w*_diagram\(|\bkernel_gallery\(|\bplot_ablation\(|\bplot_fc_kernel_terms\("
    r"|\bidentity_trick_explorer\("
)
NUMREF = re.compile(r"\{numref\}`(?:[^`<]*<)?([^`>]+)>?`")
MIN_ALT_WORDS = 8


def _cells(chapter: str) -> list[dict]:
    return json.loads((REPO / f"{chapter}.ipynb").read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _prefix(chapter: str) -> str:
    """``notebooks/06b_paper_numbers`` -> ``fig-ch6b-``; an appendix (no number):
    ``notebooks/training_step`` -> ``fig-training-step-``."""
    stem = chapter.rsplit("/", 1)[-1]
    number = re.match(r"(\d+)([a-z]?)_", stem)
    if number is None:
        return f"fig-{stem.replace('_', '-')}-"
    return f"fig-ch{int(number.group(1))}{number.group(2)}-"


def _figures(chapter: str) -> list[tuple[int, dict]]:
    return [
        (i, cell.get("metadata", {}).get("mystnb", {}))
        for i, cell in enumerate(_cells(chapter))
        if cell["cell_type"] == "code" and FIGURE_CALL.search(_source(cell))
    ]


def _names(chapter: str) -> list[str]:
    return [meta.get("figure", {}).get("name", "") for _, meta in _figures(chapter)]


def test_the_figure_detector_sees_what_it_names():
    """The pattern that finds figure cells: a test of the test, so that it cannot pass vacuously."""
    for drawing in ["plt.show()", "block_diagram(block)", "fig = kernel_gallery(h=4)",
                    "fig = ablation.plot_ablation(results)", "fig = plot_fc_kernel_terms(t, 4, 4)",
                    "identity_trick_explorer()"]:
        assert FIGURE_CALL.search(drawing), drawing
    for not_drawing in ["print(block)", "static_kernel_explorer()", "plot = 3"]:
        assert not FIGURE_CALL.search(not_drawing), not_drawing
    assert NUMREF.findall("see {numref}`fig-ch1-a` and {numref}`Figure %s <fig-ch2-b>`") == [
        "fig-ch1-a", "fig-ch2-b"]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_figure_cell_has_caption_name_and_alt(chapter):
    figures = _figures(chapter)
    assert figures, f"{chapter}: no figure cell found (the detector or the chapter changed)"
    prefix = _prefix(chapter)
    for i, meta in figures:
        figure, image = meta.get("figure", {}), meta.get("image", {})
        where = f"{chapter}, cell {i}"
        assert figure.get("name", "").startswith(prefix), f"{where}: figure name must start with {prefix}"
        assert len(figure.get("caption", "").split()) >= 8, f"{where}: a caption of a sentence or more"
        alt = image.get("alt", "")
        assert len(alt.split()) >= MIN_ALT_WORDS, f"{where}: alt text must describe the picture"
        assert not re.search(r"\.(png|svg|jpe?g)\b", alt), f"{where}: alt text is a file name"


def test_figure_names_are_unique_across_the_book():
    names = [name for chapter in CHAPTERS for name in _names(chapter)]
    assert len(names) == len(set(names)), f"figure names used twice: {sorted(names)}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_figure_is_referenced_and_every_reference_resolves(chapter):
    text = "\n".join(_source(c) for c in _cells(chapter) if c["cell_type"] == "markdown")
    referenced = set(NUMREF.findall(text))
    names = set(_names(chapter))
    assert not names - referenced, f"{chapter}: figures never referenced by number: {names - referenced}"
    book_names = {name for other in CHAPTERS for name in _names(other)} | {"fig-intro-overview"}
    assert not referenced - book_names, f"{chapter}: {{numref}} to no figure: {referenced - book_names}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_figure_cell_shows_nothing_but_its_figure(chapter):
    """myst-nb wraps every display output of a figure cell in the figure: a table or a glued
    value in the same cell would become a second figure with the same name."""
    for i, _ in _figures(chapter):
        source = _source(_cells(chapter)[i])
        assert "glue(" not in source, f"{chapter}, cell {i}: glue in a figure cell"
        last = source.rstrip().splitlines()[-1]
        assert last.startswith(("plt.show()", "fig =", "fig, ")) or FIGURE_CALL.search(last), (
            f"{chapter}, cell {i}: the cell's last line shows something besides its figure: {last!r}"
        )


# --- the built HTML ---------------------------------------------------------------------------


def _in_widget(img) -> bool:
    """A control's picture, not a figure: a widget's, or the live explorer's stand-in (chapter 2)."""
    return any(
        "widget" in " ".join(parent.get("class", [])) or "live-explorer-stand-in" in parent.get("class", [])
        for parent in img.parents
        if parent.name
    )


@pytest.mark.parametrize("page", ["book/intro", *CHAPTERS])
def test_every_picture_is_a_numbered_captioned_figure_with_alt_text(built_book, page):
    soup = BeautifulSoup(page_path(page).read_text(encoding="utf-8"), "html.parser")
    # The page's own content: the header's launch buttons (the Colab logo) are not figures.
    content = soup.select_one("article.bd-article") or soup.find("main") or soup.body
    pictures = [img for img in content.find_all("img") if not _in_widget(img)]
    assert pictures, f"{page}: no picture found"
    for img in pictures:
        figure = img.find_parent("figure")
        src = img.get("src", "")[:60]
        assert figure is not None, f"{page}: picture {src} is not inside a figure"
        caption = figure.find("figcaption")
        assert caption is not None, f"{page}: figure of {src} has no caption"
        number = caption.find(class_="caption-number")
        assert number is not None and re.match(r"Fig\. \d+", number.get_text(strip=True)), (
            f"{page}: figure of {src} is not numbered"
        )
        assert figure.get("id", "").startswith("fig-"), f"{page}: figure of {src} has no name"
        alt = img.get("alt", "")
        assert len(alt.split()) >= MIN_ALT_WORDS, f"{page}: picture {src} has alt {alt!r}"
