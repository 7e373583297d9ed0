"""The chapters as Colab opens them (``colab/*.ipynb``, written by ``book/_ext/colab_copies.py``).

* the copies and the chapters' install cells are what the script writes now (rerun it after editing a
  chapter: ``python book/_ext/colab_copies.py``);
* every install cell installs the package from the repository that ``_config.yml`` names (the launch
  buttons' repository; the built pages' links are checked by ``test_book.py``) without its
  dependencies, then what ``pyproject.toml`` declares for the chapter: never a torch, never the book's
  build tools; the HTML book hides it;
* every markdown cell of a copy, rendered by a plain CommonMark renderer (markdown-it-py's
  ``commonmark`` preset, as Colab knows no MyST), shows no MyST syntax, and every solution is in a
  closed ``<details>`` block after its exercise;
* a copy reads as the book before anything runs: every heading and at least 95% of the chapter's prose
  words are in its Markdown cells, its code cells are the chapter's (none displays prose), its numbers
  are the build's (``colab/build_values.json``, checked against the session's build) and a note near
  the top says so.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
from collections import Counter
from types import SimpleNamespace

import pytest
from book_fixtures import REPO, colab_copies, colab_install, glued_values
from bs4 import BeautifulSoup
from IPython.core.inputtransformer2 import TransformerManager
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
    """A markdown cell's text (``None`` for a code cell)."""
    return "".join(cell["source"]) if cell["cell_type"] == "markdown" else None


def _myst_left(markdown: str) -> list[str]:
    html = RENDER.render(markdown)
    return [f"{what}: {m.group(0)!r}" for what, pattern in MYST_LEFT.items() for m in pattern.finditer(html)]


def test_copies_are_up_to_date():
    stale = [str(path.relative_to(REPO)) for path in colab_copies.stale(REPO)]
    assert not stale, f"out of date (run `python book/_ext/colab_copies.py`): {stale}"


def _install_cell(cells: list[dict]) -> dict:
    installs = [c for c in cells if "".join(c["source"]).startswith(colab_install.INSTALL_MARKER)]
    assert len(installs) == 1 and cells.index(installs[0]) <= 2, "no install cell at the top"
    return installs[0]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_install_cell_is_the_one_written_for_the_chapter(path):
    url, _ = colab_copies.repository(REPO)
    cells = json.loads(path.read_text())["cells"]
    chapter_cell = _install_cell(cells)
    expected = colab_copies.with_install_cell(cells, colab_copies.Book(REPO))
    assert chapter_cell["source"] == expected[cells.index(chapter_cell)]["source"]
    assert chapter_cell["metadata"].get("tags") == ["remove-cell"], "the HTML book must hide the install cell"
    copy_cell = _install_cell(json.loads((REPO / colab_copies.COLAB_DIR / path.name).read_text())["cells"])
    assert copy_cell["source"] == chapter_cell["source"] and "tags" not in copy_cell["metadata"]
    source = "".join(chapter_cell["source"])
    assert f'BOOK_REPO = "{url}"' in source and "print(" in source, "a failed install must say what to do"
    assert max(map(len, source.splitlines())) <= 88, "the install cell must fit the book's code column"


def _installs(source: str) -> tuple[list[str], list[str], list[str]]:
    """An install cell's ``%pip install`` lines, what its second line installs, and the extras it names."""
    pips = re.findall(r"^\s*%pip install (.*)$", source, re.M)
    tree = ast.parse(TransformerManager().transform_cell(source))
    needs = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CHAPTER_NEEDS")
    extras = re.search(r"its extras \[([^\]]*)\]", source).group(1).split(", ")
    return pips, shlex.split(needs), extras


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_install_cell_installs_what_pyproject_declares_but_never_torch_or_build_tools(path):
    source = "".join(_install_cell(json.loads(path.read_text())["cells"])["source"])
    pips, installed, extras = _installs(source)
    assert pips == ['-q --no-deps "repmlp_lite @ git+{BOOK_REPO}"', "-q {CHAPTER_NEEDS}"], pips
    project = colab_install.pyproject(REPO)
    assert set(extras) <= set(colab_install.READER_EXTRAS) and extras[0] == colab_install.READER_EXTRAS[0]
    declared = set(project["dependencies"]).union(*(colab_install.extra_requirements(project, e) for e in extras))
    assert set(installed) <= declared, f"not declared in pyproject.toml: {set(installed) - declared}"
    assert sorted(installed) == sorted(colab_install.reader_requirements(project, extras))
    names = {colab_install.requirement_name(r) for r in installed}
    tools = {colab_install.requirement_name(r) for extra in ("book", "lab", "test")
             for r in colab_install.extra_requirements(project, extra)}
    tools -= {colab_install.requirement_name(r) for extra in colab_install.READER_EXTRAS
              for r in colab_install.extra_requirements(project, extra)}
    assert "jupyter-book" in tools and "pytest" in tools
    assert not names & (tools | {"torch", "torchvision", "torchaudio"}), names & tools


def test_chapters_that_export_to_onnx_install_the_onnx_extra():
    """The extras come from what a chapter imports, through the package's modules too."""
    needs = colab_install.chapter_extras
    assert needs(["from repmlp_lite.export import export_onnx"], REPO) == ["chapters", "onnx"]
    assert needs(["%matplotlib inline\nfrom repmlp_lite import conv_to_fc"], REPO) == ["chapters"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_install_cell_is_hidden_in_the_html_book(built_book, path):
    html = (built_book / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
    assert "BOOK_REPO" not in html and "CHAPTER_NEEDS" not in html


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


def test_values_are_written_as_text_and_marked_where_they_depend_on_the_machine():
    text = "a*b_c [1] <x> | `y` $2"
    values = {"built": {}, "pages": {"notebooks/x": {
        "odd": {"text": text, "machine_dependent": False}, "ms": {"text": "1.25", "machine_dependent": True}}}}
    book = SimpleNamespace(values=values)
    markdown = colab_copies._value(book, "notebooks/x", "odd")
    assert BeautifulSoup(RENDER.render(markdown), "html.parser").get_text().strip() == text
    assert colab_copies._value(book, "notebooks/x", "ms") == "1.25" + colab_copies.MACHINE_MARK
    with pytest.raises(ValueError, match="--values"):
        colab_copies._value(book, "notebooks/x", "new_name")


def test_the_build_records_each_chapters_glued_values_in_one_file(tmp_path, monkeypatch, caplog):
    """book/_ext/glued_values.py: a record file per page before it is read, gathered when the build ends."""
    app = SimpleNamespace(outdir=str(tmp_path / "html"))
    monkeypatch.setenv(glued_values.GLUE_RECORD_ENV, "")  # restored after the test
    stale = tmp_path / "glued" / "notebooks" / "01_x.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text("left by an earlier build\n")
    glued_values._name_record(app, "notebooks/01_x", [])
    assert not stale.exists() and os.environ[glued_values.GLUE_RECORD_ENV] == str(stale)
    entry = {"name": "ms", "text": "1.25", "machine_dependent": True}
    stale.write_text(json.dumps(entry) + "\n" + json.dumps(entry | {"text": "1.31"}) + "\n")
    with caplog.at_level("WARNING"):
        glued_values._gather(app, None)
    assert "glued twice with different values" in caplog.text
    values = glued_values.read(tmp_path / glued_values.BUILD_VALUES.name)
    assert values["pages"] == {"notebooks/01_x": {"ms": {"text": "1.31", "machine_dependent": True}}}
    assert set(values["built"]) == {"machine", "date"}


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


# --- a copy reads as the book before anything runs -------------------------------------------

ROLE_OR_TARGET = re.compile(r"\{[\w:-]+\}`[^`]*`|^\([\w-]+\)=\s*$|^(?:`{3,}|:{3,})\{[\w-]+\}|^:[\w-]+:.*$", re.M)
WORD = re.compile(r"[a-z][a-z'’-]*")
PROSE_SHARE = 0.95  # of a chapter's prose words that its copy's Markdown cells must carry


def _words(markdown: str) -> list[str]:
    return WORD.findall(ROLE_OR_TARGET.sub(" ", markdown).lower())


def _titles(markdown: str) -> list[list[str]]:
    """The words of each heading (and each ``<summary>``: a folded solution's title) of ``markdown``."""
    tokens = RENDER.parse(markdown)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    return [_words(title) for title in headings + re.findall(r"<summary>(.*?)</summary>", markdown)]


def _in_order(words: list[str], title: list[str]) -> bool:
    """``words`` appear in ``title``, in this order (a rewritten role may add words between them)."""
    rest = iter(title)
    return all(word in rest for word in words)


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _markdown(cells: list[dict]) -> str:
    return "\n\n".join(m for m in map(_markdown_of, cells) if m is not None)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_copy_has_every_heading_and_the_prose_in_markdown_cells(path):
    chapter, copy = _markdown(_cells(path)), _markdown(_cells(REPO / colab_copies.COLAB_DIR / path.name))
    copy_titles = _titles(copy)
    missing = [" ".join(words) for words in _titles(chapter)
               if not any(_in_order(words, title) for title in copy_titles)]
    assert not missing, f"{path.name}: headings that are no Markdown heading of the copy: {missing}"
    prose, kept = Counter(_words(chapter)), Counter(_words(copy))
    share = sum((prose & kept).values()) / sum(prose.values())
    assert share >= PROSE_SHARE, f"{path.name}: {share:.1%} of the prose words are in the copy's Markdown"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_copy_adds_no_code_cell(path):
    """No code cell carries prose: the copy's code cells are the chapter's, in order (a solution's code
    behind a form title)."""
    chapter = [c for c in _cells(path) if c["cell_type"] == "code"]
    copy = [c for c in _cells(REPO / colab_copies.COLAB_DIR / path.name) if c["cell_type"] == "code"]
    assert len(copy) == len(chapter), f"{path.name}: {len(copy)} code cells in the copy, {len(chapter)} in the chapter"
    for ours, theirs in zip(copy, chapter):
        code = re.sub(r"^#@title Solution [^\n]*\n", "", "".join(ours["source"]))
        assert code == "".join(theirs["source"]), f"{path.name}: a code cell differs: {code[:80]!r}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_copy_says_where_its_numbers_come_from(path):
    cells = _cells(REPO / colab_copies.COLAB_DIR / path.name)
    values = glued_values.read(REPO / glued_values.COMMITTED_VALUES)
    quoted = values["pages"].get(f"notebooks/{path.stem}", {})
    notes = [i for i, c in enumerate(cells) if c.get("id") == colab_copies.NOTE_ID]
    if not quoted:
        assert not notes
        return
    assert notes == [1], f"{path.name}: the note on the build's numbers must follow the chapter's opening"
    note = "".join(cells[1]["source"])
    assert values["built"]["machine"] in note and values["built"]["date"] in note
    marked = any(value["machine_dependent"] for value in quoted.values())
    assert (colab_copies.MACHINE_MARK in note) == marked
    text = _markdown(cells[2:])
    for name in quoted:
        assert colab_copies._value(SimpleNamespace(values=values), f"notebooks/{path.stem}", name) in text, name


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_committed_values_are_the_builds_where_they_do_not_depend_on_the_machine(built_book, path):
    """The copies quote ``colab/build_values.json``; the session's build recorded its own values. A
    value that does not depend on the machine must be the same (else the chapter changed what it
    computes: rerun ``python book/_ext/colab_copies.py --values _build/glued_values.json``)."""
    page = f"notebooks/{path.stem}"
    committed = glued_values.read(REPO / glued_values.COMMITTED_VALUES)["pages"].get(page, {})
    built = glued_values.read(REPO / glued_values.BUILD_VALUES)["pages"].get(page, {})
    differ = [f"{name}: committed {value}, built {built.get(name)}" for name, value in committed.items()
              if name not in built or built[name]["machine_dependent"] != value["machine_dependent"]
              or (not value["machine_dependent"] and built[name]["text"] != value["text"])]
    assert not differ, (f"{page}: the copy's numbers are not this build's (run `python book/_ext/colab_copies.py "
                        f"--values {glued_values.BUILD_VALUES}`):\n" + "\n".join(differ))
