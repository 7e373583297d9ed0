"""The chapters as Colab opens them (``colab/*.ipynb``, written by ``book/_ext/colab_copies.py``).

* the copies and the chapters' install cells are what the script writes now (rerun it after editing a
  chapter: ``python book/_ext/colab_copies.py``);
* every install cell installs the book's extras from the repository that ``_config.yml`` names (the
  launch buttons' repository; the built pages' links are checked by ``test_book.py``);
* every markdown cell of a copy, rendered by a plain CommonMark renderer (markdown-it-py's
  ``commonmark`` preset, as Colab knows no MyST), shows no MyST syntax, and every solution is in a
  closed ``<details>`` block after its exercise; the paragraphs that quote computed numbers are form
  cells whose Markdown passes the same check.
"""

from __future__ import annotations

import json
import re

import pytest
from book_fixtures import REPO, colab_copies
from bs4 import BeautifulSoup
from markdown_it import MarkdownIt

CHAPTERS = sorted((REPO / "notebooks").glob("*.ipynb"))
COPIES = [REPO / colab_copies.COLAB_DIR / path.name for path in CHAPTERS]

# MyST left in rendered HTML: a directive fence (a code block whose language is "{name}"), a role
# ("{name}" before a code span), an option line, a colon fence, a target, an equation label.
MYST_LEFT = {
    "a directive fence": re.compile(r'class="language-\{|^\s*(?:`{3,}|:{3,})\{', re.M),
    "a role": re.compile(r"\{[\w:-]+\}(?:<code>|`)"),
    "a directive option": re.compile(r"^<p>:[\w-]+:", re.M),
    "a colon fence": re.compile(r"^<p>:::", re.M),
    "a target": re.compile(r"\([\w-]+\)="),
    "an equation label": re.compile(r"\$\$\s*\([\w-]+\)"),
}
RENDER = MarkdownIt("commonmark")


def _markdown_of(cell: dict) -> str | None:
    """A markdown cell's text, or the Markdown a form cell displays (its raw-string template)."""
    source = "".join(cell["source"])
    if cell["cell_type"] == "markdown":
        return source
    match = re.search(r'Markdown\(rf"""(.*)"""\)\s*$', source, re.S)
    if cell["cell_type"] == "code" and cell.get("metadata", {}).get("cellView") == "form" and match:
        return match.group(1).replace("{{", "{").replace("}}", "}")
    return None


def _myst_left(markdown: str) -> list[str]:
    html = RENDER.render(markdown)
    return [f"{what}: {m.group(0)!r}" for what, pattern in MYST_LEFT.items() for m in pattern.finditer(html)]


def test_copies_are_up_to_date():
    stale = [str(path.relative_to(REPO)) for path in colab_copies.stale(REPO)]
    assert not stale, f"out of date (run `python book/_ext/colab_copies.py`): {stale}"


@pytest.mark.parametrize("path", CHAPTERS + COPIES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_install_cell_installs_the_configured_repository_with_extras(path):
    url, _ = colab_copies.repository(REPO)
    cells = json.loads(path.read_text())["cells"]
    installs = [c for c in cells if "".join(c["source"]).startswith(colab_copies.INSTALL_MARKER)]
    assert len(installs) == 1 and cells.index(installs[0]) <= 2, f"{path.name}: no install cell at the top"
    source = "".join(installs[0]["source"])
    assert source == colab_copies.install_cell(url)
    assert f'BOOK_REPO = "{url}"' in source and '"repmlp_lite[book] @ git+{BOOK_REPO}"' in source
    assert "print(" in source, "a failed install must say what to do"


@pytest.mark.parametrize("path", COPIES, ids=lambda p: p.stem)
def test_copy_reads_as_plain_markdown(path):
    cells = json.loads(path.read_text())["cells"]
    found = []
    for index, cell in enumerate(cells):
        markdown = _markdown_of(cell)
        if markdown is not None:
            found += [f"cell {index}: {problem}" for problem in _myst_left(markdown)]
    assert not found, f"{path.name}: MyST left for Colab:\n" + "\n".join(found)


@pytest.mark.parametrize("path", COPIES, ids=lambda p: p.stem)
def test_copy_hides_each_solution_after_its_exercise(path):
    cells = json.loads(path.read_text())["cells"]
    html = "\n".join(RENDER.render(m) for m in map(_markdown_of, cells) if m)
    exercises = re.findall(r"<strong>Exercise ([\w.]+):", html)
    assert exercises or not re.match(r"\d", path.name), f"{path.name}: no exercise"  # an appendix need not
    solutions = re.findall(r"<details>\s*<summary><b>Solution ([\w.]+):", html)
    assert solutions == exercises, f"{path.name}: hidden solutions {solutions}, exercises {exercises}"
    visible = re.sub(r"<details>.*?</details>", "", html, flags=re.S)
    visible = re.sub(r"Solution: “Solution [\w.]+:[^”]*”, at the end of the chapter\.", "", visible)
    assert "Solution" not in re.sub(r"<h\d>.*?</h\d>", "", visible), f"{path.name}: a solution outside <details>"
    assert not exercises or html.index("<strong>Exercise") < html.index("<summary><b>Solution")
    for cell in cells:
        if "solution" in cell["metadata"].get("tags", []):
            assert cell["metadata"].get("cellView") == "form", f"{path.name}: a solution's code is in plain view"
            assert "".join(cell["source"]).startswith("#@title Solution ")


def test_form_cells_fill_in_the_numbers():
    cell = colab_copies._eval_cell("A {eval}`acc` in $\\{x\\}$ and {1, 2}.", "notebooks/x")
    namespace = {"acc": "0.93"}
    source = "".join(cell["source"]).replace('Markdown(rf"""', 'shown = Markdown(rf"""')
    exec(source, namespace)  # noqa: S102 - the cell's own code
    assert namespace["shown"].data == "A 0.93 in $\\{x\\}$ and {1, 2}."
    assert cell["metadata"] == {"cellView": "form"}


def test_the_myst_check_catches_what_it_names():
    for sample in ["```{admonition} Solution\n:class: dropdown\nx\n```", "see {doc}`x`", ":::{note}\nx\n:::",
                   "(claims-here)=\n# A", "$$\nx\n$$ (eq-a)"]:
        assert _myst_left(sample), sample
    assert not _myst_left("> **Exercise 1**\n>\n> Show $x$.\n\n<details>\n<summary><b>Hint</b></summary>\n\nx\n\n</details>")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_copies_number_equations_and_figures_as_the_html_book(built_book, path):
    """A Colab reader told "Eq. (12)" or "Fig. 7" finds the same equation or figure as an HTML reader."""
    soup = BeautifulSoup((built_book / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8"), "html.parser")
    book = colab_copies.Book(REPO)
    page = f"notebooks/{path.stem}"
    html_equations = [int(re.search(r"\d+", e.get_text()).group()) for e in soup.select("span.eqno")]
    ours = sorted(number for where, number in book.equations.values() if where == page)
    assert html_equations == ours, f"{page}: HTML numbers equations {html_equations}, the copy {ours}"
    html_figures = {f["id"]: int(re.search(r"\d+", f.find(class_="caption-number").get_text()).group())
                    for f in soup.select("figure[id^=fig-]")}
    copy_figures = {name: number for name, (number, _) in book.figures.items() if name in html_figures}
    assert html_figures == copy_figures
