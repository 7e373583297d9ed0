"""The chapters as Colab opens them: ``colab/*.ipynb``, written from ``notebooks/*.ipynb``.

Colab renders Markdown with no MyST extension, so each chapter's Colab copy has its prose rewritten
into plain Markdown (CommonMark plus ``$...$`` math, which Colab typesets):

* admonitions and notes become block quotes with a bold title; dropdowns (hints) become closed
  ``<details>`` blocks; each solution (a section at the chapter's end) becomes a closed ``<details>``
  and its code a form cell that shows only its title, so no solution is in plain view;
* ``{doc}`` links point at the other chapters' Colab copies (book pages: at the repository);
  ``{ref}`` shows the section's title, ``{cite}`` "Author (year)", ``{eq}`` "Eq. (n)"
  (labelled display equations get a ``\\tag``) and ``{numref}`` "Fig. n", both numbered through the
  book as the HTML book numbers them;
  ``(label)=`` targets are dropped;
* each figure's caption follows it as a line of its own (see below);
* every heading and paragraph stays Markdown, so Colab shows the whole chapter (and its table of
  contents) before anything runs: a computed number (``{eval}`name```) is written as the book's build
  computed it, from ``colab/build_values.json`` (``book/_ext/glued_values.py``: the build records the
  values, ``--values`` takes them in). A note under the chapter's opening says so; a number that
  depends on the machine (``glue(..., machine_dependent=True)``: timings, speed ratios, rounding
  errors, trained accuracies, the device) is marked †, and the note says that the reader's run prints
  its own in the output of the code above it.

The repository URL lives in one place, ``_config.yml``'s ``repository.url``: this script also writes
it into every chapter's install cell (``book/_ext/colab_install.py``: the package without its
dependencies, never a torch, then the chapter's extras from ``pyproject.toml``), in ``notebooks/``
(tagged ``remove-cell``: the HTML book drops it) and in the copies.

A figure's caption lives in its cell's myst-nb metadata, which the HTML book turns into a numbered
caption but neither JupyterLab nor Colab shows. So this script also writes, after every figure cell
in ``notebooks/``, a markdown cell with "Fig. n: caption" (:func:`caption_cell`), tagged
``remove-cell`` (the HTML book drops it: its own caption is there) and ``figure-caption`` (so the
next run replaces it): JupyterLab shows it as written, Colab as plain Markdown.

Run from the repository root after editing a chapter (``tests/test_colab.py`` checks the copies are
up to date)::

    python book/_ext/colab_copies.py          # write notebooks' install cells and colab/*.ipynb
    python book/_ext/colab_copies.py --check  # exit 1 if anything would change
    # after a book build: the copies with the numbers it computed (stored in colab/build_values.json)
    python book/_ext/colab_copies.py --values _build/glued_values.json

Without ``--values`` the numbers come from the committed ``colab/build_values.json``, so the copies
(and ``--check``) do not change when a rebuild times something differently. A paragraph that quotes
a value the file lacks (a new one) is an error that says to build and pass ``--values``; the tests
compare the committed values with the session's build (those that do not depend on the machine
must be equal).

As a Sphinx extension (``_config.yml``, ``local_extensions``) it points each chapter's Colab launch
button at the chapter's copy.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import glued_values
import yaml
from colab_install import INSTALL_MARKER, chapter_extras, install_cell, pyproject, reader_requirements

ROOT = Path(__file__).resolve().parents[2]
COLAB_DIR = "colab"
COLAB = "https://colab.research.google.com/github"
MACHINE_MARK = "†"  # after a number of the build's that depends on the machine
NOTE_ID = "colab-build-numbers"

FENCE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[\w-]+)\}[ \t]*(?P<args>.*)$")
OPTION = re.compile(r"^:(?P<key>[\w-]+):[ \t]*(?P<value>.*)$")
TARGET = re.compile(r"^\((?P<label>[\w-]+)\)=[ \t]*\n", re.M)
EQUATION_LABEL = re.compile(r"\$\$[ \t]*\((?P<label>[\w-]+)\)[ \t]*$", re.M)
ROLE = re.compile(r"\{(?P<name>[\w:-]+)\}`(?P<body>[^`]+)`")
TITLED = re.compile(r"^(?P<text>.*?)\s*<(?P<target>[^<>]+)>$", re.S)
SOLUTION_HEADING = re.compile(r"^#{2,4}[ \t]+(?P<title>Solution [\w.]+:[^\n]*)\n(?P<body>.*)$", re.S)
FIGURE_NAME = re.compile(r"^:name:[ \t]*(?P<name>fig-[\w-]+)[ \t]*$", re.M)
CAPTION_TAG = "figure-caption"
ADMONITIONS = {"note", "tip", "important", "warning", "caution", "attention", "hint", "seealso"}


def repository(root: Path = ROOT) -> tuple[str, str]:
    """``(url, branch)`` from ``_config.yml``'s ``repository`` section."""
    config = yaml.safe_load((root / "_config.yml").read_text())
    repo = config["repository"]
    return str(repo["url"]).rstrip("/"), str(repo.get("branch", "main"))


def toc_pages(root: Path = ROOT) -> list[str]:
    """The book's pages in reading order (``_toc.yml``: the root, then every ``file`` of its parts,
    chapters and sections, depth first), without their suffixes."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    pages: list[str] = [str(toc["root"])]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                pages.append(str(node["file"]).removesuffix(".ipynb").removesuffix(".md"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    return pages


def colab_url(url: str, branch: str, path: str) -> str:
    """Colab's address of ``path`` (relative to the repository root) on GitHub."""
    org_repo = url.removeprefix("https://github.com/")
    return f"{COLAB}/{org_repo}/blob/{branch}/{path}"


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _figure(cell: dict) -> dict[str, str]:
    """A code cell's myst-nb figure metadata (``name``, ``caption``), or ``{}``."""
    return cell.get("metadata", {}).get("mystnb", {}).get("figure", {}) if cell["cell_type"] == "code" else {}


def _title(markdown: str, fallback: str) -> str:
    match = re.search(r"^#[ \t]+(.+)$", markdown, re.M)
    return match.group(1).strip() if match else fallback


def _bib(path: Path) -> dict[str, str]:
    """``key -> "Author et al. (year)"`` from a BibTeX file (first author's family name)."""
    out: dict[str, str] = {}
    for entry in re.split(r"^@", path.read_text(), flags=re.M)[1:]:
        key = re.match(r"\w+\{([^,]+),", entry)
        author = re.search(r"author\s*=\s*\{(.+?)\},?\s*$", entry, re.M)
        year = re.search(r"year\s*=\s*\{?(\d{4})", entry)
        if not (key and author and year):
            continue
        authors = [a.strip() for a in author.group(1).split(" and ")]
        family = authors[0].split(",")[0].strip("{} ")
        if len(authors) > 2:
            more = " et al."
        elif len(authors) == 2:
            more = " and " + authors[1].split(",")[0].strip("{} ")
        else:
            more = ""
        out[key.group(1).strip()] = f"{family}{more} ({year.group(1)})"
    return out


class Book:
    """What the rewriting needs to know about the whole book: titles, labels, references, URLs."""

    def __init__(self, root: Path = ROOT, build_values: glued_values.Values | None = None) -> None:
        """``build_values``: a build's record of the glued values, to quote instead of the committed ones."""
        self.root = root
        self.url, self.branch = repository(root)
        self.notebooks = sorted((root / "notebooks").glob("*.ipynb"))
        self.texts: dict[str, str] = {}  # path relative to the root, without suffix -> its markdown
        self.titles: dict[str, str] = {}  # path relative to the root, without suffix -> title
        self.sections: dict[str, str] = {}  # (label)= target -> the heading below it
        self.equations: dict[str, tuple[str, int]] = {}  # equation label -> (page, number)
        # figure name -> (number, caption), numbered through the book in reading order as the HTML
        # book numbers them (the introduction's figure first, then the chapters' figure cells)
        self.figures: dict[str, tuple[int, str]] = {}
        for match in FIGURE_NAME.finditer((root / "book" / "intro.md").read_text()):
            self.figures[match.group("name")] = (len(self.figures) + 1, "")
        for path in self.notebooks:
            page = f"notebooks/{path.stem}"
            cells = json.loads(path.read_text())["cells"]
            text = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
            self._index(page, text)
            for cell in cells:
                figure = _figure(cell)
                if figure:
                    self.figures[figure["name"]] = (len(self.figures) + 1, figure["caption"])
        for path in sorted((root / "book").glob("*.md")):
            self._index(f"book/{path.stem}", path.read_text())
        # labelled equations, numbered through the book in the table of contents' order, as the HTML book
        for page in toc_pages(root):
            for match in EQUATION_LABEL.finditer(self.texts[page]):
                self.equations[match.group("label")] = (page, len(self.equations) + 1)
        self.cites = _bib(root / "book" / "references.bib")
        # the values the copies quote: the build's, or those committed beside the copies
        self.values = (glued_values.quoted(build_values, self.quoted_names()) if build_values is not None
                       else glued_values.read(root / glued_values.COMMITTED_VALUES))

    def _index(self, page: str, text: str) -> None:
        self.texts[page] = text
        self.titles[page] = _title(text, page)
        for match in re.finditer(r"^\(([\w-]+)\)=[ \t]*\n+#+[ \t]+(.+)$", text, re.M):
            self.sections[match.group(1)] = match.group(2).strip()

    def quoted_names(self) -> dict[str, list[str]]:
        """``page -> the names its prose quotes with {eval}``, each once, in reading order."""
        return {page: list(dict.fromkeys(m.group("body") for m in ROLE.finditer(text) if m.group("name") == "eval"))
                for page, text in self.texts.items() if page.startswith("notebooks/")}

    def link(self, page: str) -> str:
        if page.startswith("notebooks/"):
            return colab_url(self.url, self.branch, f"{COLAB_DIR}/{page.removeprefix('notebooks/')}.ipynb")
        return f"{self.url}/blob/{self.branch}/{page}.md"


def _page_of(target: str, page: str) -> str:
    """A ``{doc}`` target, relative to ``page``'s folder, as a path from the root without suffix."""
    parts = page.split("/")[:-1]
    for part in target.removesuffix(".ipynb").removesuffix(".md").split("/"):
        if part == "..":
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def _role(book: Book, page: str, name: str, body: str) -> str:
    titled = TITLED.match(body)
    text, target = (titled.group("text"), titled.group("target")) if titled else (None, body)
    if name == "doc":
        other = _page_of(target, page)
        if other not in book.titles:
            raise ValueError(f"{page}: {{doc}}`{body}` names no page of the book")
        return f"[{text or book.titles[other]}]({book.link(other)})"
    if name == "ref":
        if target not in book.sections:
            raise ValueError(f"{page}: {{ref}}`{body}` names no section")
        return text or f"“{book.sections[target]}”"
    if name == "eq":
        if target not in book.equations:
            raise ValueError(f"{page}: {{eq}}`{body}` names no equation")
        where, number = book.equations[target]
        here = f"Eq. ({number})"
        return here if where == page else f"{here} of [{book.titles[where]}]({book.link(where)})"
    if name.startswith("cite"):
        keys = [key.strip() for key in body.split(",")]
        missing = [key for key in keys if key not in book.cites]
        if missing:
            raise ValueError(f"{page}: {{cite}} keys {missing} are not in book/references.bib")
        return "; ".join(book.cites[key] for key in keys)
    if name == "numref":
        if target not in book.figures:
            raise ValueError(f"{page}: {{numref}}`{body}` names no figure")
        return f"Fig. {book.figures[target][0]}"
    if name == "math":
        return f"${body}$"
    if name == "eval":
        return _value(book, page, body)
    raise ValueError(f"{page}: no plain-Markdown form for the role {{{name}}}`{body}`")


def _value(book: Book, page: str, name: str) -> str:
    """A glued value as the build computed it, as Markdown text; marked when it depends on the machine."""
    value = book.values["pages"].get(page, {}).get(name)
    if value is None:
        raise ValueError(
            f"{page}: {{eval}}`{name}` has no value recorded by a book build ({glued_values.COMMITTED_VALUES}): "
            f"build the book, then run `python book/_ext/colab_copies.py --values {glued_values.BUILD_VALUES}`")
    if "\n" in value["text"]:
        raise ValueError(f"{page}: the value of {{eval}}`{name}` spans lines, which a paragraph cannot quote")
    text = re.sub(r"([\\`*_\[\]<>|$])", r"\\\1", value["text"])  # as text, not as Markdown
    return text + (MACHINE_MARK if value["machine_dependent"] else "")


def _quote(text: str) -> str:
    return "".join(f"> {line}" if line.strip() else ">\n" for line in _lines(text.rstrip("\n") + "\n"))


def _closes(line: str, fence: str) -> bool:
    """``line`` closes ``fence``: the same fence character, at least as many times, alone."""
    return line.startswith(fence) and line.strip() == fence[0] * len(line.strip())


def _directives(text: str, page: str) -> str:
    """Admonitions and notes as block quotes; dropdowns as closed ``<details>``."""
    lines, out, i = _lines(text), [], 0
    while i < len(lines):
        match = FENCE.match(lines[i].rstrip("\n"))
        if not match:
            out.append(lines[i])
            i += 1
            continue
        fence, name, title = match.group("fence"), match.group("name"), match.group("args").strip()
        end = i + 1
        while end < len(lines) and not _closes(lines[end], fence):
            end += 1
        body = lines[i + 1:end]
        options: dict[str, str] = {}
        while body and OPTION.match(body[0].rstrip("\n")):
            option = OPTION.match(body[0].rstrip("\n"))
            options[option.group("key")] = option.group("value")
            body = body[1:]
        inner = _directives("".join(body), page).strip("\n")
        if name == "admonition" or name in ADMONITIONS:
            title = title or name.capitalize()
            if "dropdown" in options.get("class", "").split():
                block = f"<details>\n<summary><b>{title}</b></summary>\n\n{inner}\n\n</details>\n"
            else:
                block = _quote(f"**{title}**\n\n{inner}")
        else:
            raise ValueError(f"{page}: no plain-Markdown form for the directive {{{name}}}")
        if out and out[-1].strip():
            out.append("\n")  # a blank line before and after: a block of its own in CommonMark
        out.append(block + "\n")
        i = end + 1
    return "".join(out)


def _equations(text: str, book: Book, page: str) -> str:
    def tag(match: re.Match) -> str:
        return f"\\tag{{{book.equations[match.group('label')][1]}}}\n$$"

    return EQUATION_LABEL.sub(tag, text)


def plain_markdown(text: str, book: Book, page: str) -> str:
    """One markdown cell's MyST, as CommonMark, with the build's values for its ``{eval}`` roles."""
    text = TARGET.sub("", text)
    text = _directives(text, page)
    text = _equations(text, book, page)
    return ROLE.sub(lambda m: _role(book, page, m.group("name"), m.group("body")), text)


def _folded_solution(text: str) -> str:
    """A solution's section (``(sol-X-Y)=`` then ``### Solution X.Y: title``) as a closed ``<details>``."""
    match = SOLUTION_HEADING.match(TARGET.sub("", text).lstrip("\n"))
    if not match:
        return text
    body = match.group("body").strip("\n")
    return f"<details>\n<summary><b>{match.group('title')}</b></summary>\n\n{body}\n\n</details>\n"


def numbers_note(book: Book, page: str) -> dict[str, Any] | None:
    """The copy's note under the chapter's opening: where its numbers come from (``None``: it quotes none)."""
    quoted = book.values["pages"].get(page, {})
    if not quoted:
        return None
    text = (f"> **The numbers in this text** are those the book's build computed ({book.values['built']['machine']}; "
            f"{book.values['built']['date']}), so that Colab shows them before anything runs.")
    if any(value["machine_dependent"] for value in quoted.values()):
        text += (f" A number marked {MACHINE_MARK} depends on the machine (a timing, a speed ratio, a rounding "
                 "error, a trained accuracy, the device): when you run the chapter, the code above it prints "
                 "your machine's own.")
    return {"cell_type": "markdown", "id": NOTE_ID, "metadata": {}, "source": _lines(text + "\n")}


def colab_cells(nb: dict, book: Book, page: str) -> list[dict]:
    """The copy's cells: Markdown rewritten, solutions folded, the note on the numbers under the opening."""
    cells = []
    solution = ""  # the title of the solution section the cells belong to, once in the solutions
    for cell in nb["cells"]:
        cell = copy.deepcopy(cell)
        source = _source(cell)
        if cell["cell_type"] == "code" and "solution" in cell["metadata"].get("tags", []):
            # a form: Colab shows its title and folds the code, which still runs
            cell["source"] = _lines(f"#@title {solution}: the code\n{source}")
            cell["metadata"]["cellView"] = "form"
        elif cell["cell_type"] == "markdown":
            heading = SOLUTION_HEADING.match(TARGET.sub("", source).lstrip("\n"))
            if heading:
                solution = heading.group("title")
                source = _folded_solution(source)
            cell["source"] = _lines(plain_markdown(source, book, page))
        if {CAPTION_TAG, "remove-cell"} & set(cell["metadata"].get("tags", [])):
            cell["metadata"].pop("tags")  # the HTML book's tags (captions, install cell) mean nothing to Colab
        cells.append(cell)
    note = numbers_note(book, page)
    return cells[:1] + [note] + cells[1:] if note else cells


def caption_cell(figure: dict[str, str], book: Book) -> dict[str, Any]:
    """The markdown cell written below a figure cell: its caption, numbered as the HTML book numbers it."""
    number, caption = book.figures[figure["name"]]
    return {"cell_type": "markdown", "id": f"caption-{figure['name']}"[:64],
            "metadata": {"tags": ["remove-cell", CAPTION_TAG]}, "source": _lines(f"*Fig. {number}: {caption}*")}


def with_captions(cells: list[dict], book: Book) -> list[dict]:
    """``cells`` with one caption cell after each figure cell (old caption cells replaced)."""
    out = []
    for cell in cells:
        if CAPTION_TAG in cell["metadata"].get("tags", []):
            continue
        out.append(cell)
        figure = _figure(cell)
        if figure:
            out.append(caption_cell(figure, book))
    return out


def _dump(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def with_install_cell(cells: list[dict], book: Book) -> list[dict]:
    """``cells`` with the install cell rewritten for the chapter they are (and tagged ``remove-cell``)."""
    code = [_source(c) for c in cells if c["cell_type"] == "code"]
    extras = chapter_extras(code, book.root)
    source = install_cell(book.url, extras, reader_requirements(pyproject(book.root), extras))
    out = []
    for cell in cells:
        if cell["cell_type"] == "code" and _source(cell).startswith(INSTALL_MARKER):
            tags = cell["metadata"].get("tags", [])
            tags = tags if "remove-cell" in tags else [*tags, "remove-cell"]
            cell = cell | {"source": _lines(source), "metadata": cell["metadata"] | {"tags": tags}}
        out.append(cell)
    return out


def outputs(root: Path = ROOT, build_values: glued_values.Values | None = None) -> dict[Path, str]:
    """Every file this script writes, with its text: the chapters (install cells, captions) and their
    copies; with ``build_values`` (a build's record), also the committed values the copies quote."""
    book = Book(root, build_values)
    files: dict[Path, str] = {}
    if build_values is not None:
        files[root / glued_values.COMMITTED_VALUES] = glued_values.dump(book.values)
    for path in book.notebooks:
        nb = json.loads(path.read_text())
        nb["cells"] = with_captions(with_install_cell(nb["cells"], book), book)
        files[path] = _dump(nb)
        page = f"notebooks/{path.stem}"
        copy_nb = {
            "cells": colab_cells(nb, book, page),
            "metadata": nb["metadata"] | {"repmlp_colab_copy": {
                "of": f"{page}.ipynb", "written_by": "python book/_ext/colab_copies.py"}},
            "nbformat": nb["nbformat"],
            "nbformat_minor": nb["nbformat_minor"],
        }
        files[root / COLAB_DIR / path.name] = _dump(copy_nb)
    return files


def stale(root: Path = ROOT, build_values: glued_values.Values | None = None) -> list[Path]:
    """The files :func:`outputs` would change (missing, different), and copies of no chapter."""
    return _changed(outputs(root, build_values), root)


def _changed(files: dict[Path, str], root: Path) -> list[Path]:
    changed = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    orphans = [path for path in sorted((root / COLAB_DIR).glob("*.ipynb")) if path not in files]
    return changed + orphans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if any file would change")
    parser.add_argument("--values", type=Path, metavar="JSON",
                        help=f"the values a book build glued ({glued_values.BUILD_VALUES}): the copies quote them, "
                             f"and the ones they quote are stored in {glued_values.COMMITTED_VALUES}")
    args = parser.parse_args(argv)
    try:
        files = outputs(ROOT, glued_values.read(args.values) if args.values else None)
    except (FileNotFoundError, ValueError) as error:
        print(f"colab_copies: {error}", file=sys.stderr)
        return 2
    old = _changed(files, ROOT)
    if args.check:
        for path in old:
            print(f"out of date: {path.relative_to(ROOT)}")
        return 1 if old else 0
    (ROOT / COLAB_DIR).mkdir(exist_ok=True)
    for path in old:
        if path in files:
            path.write_text(files[path])
            print(f"wrote {path.relative_to(ROOT)}")
        else:
            path.unlink()
            print(f"removed {path.relative_to(ROOT)}")
    return 0


def _colab_button(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Point a chapter's Colab launch button at its copy in ``colab/``."""
    if not pagename.startswith("notebooks/"):
        return
    url, branch = repository(Path(app.srcdir))
    old = colab_url(url, branch, f"{pagename}.ipynb")
    new = colab_url(url, branch, f"{COLAB_DIR}/{pagename.removeprefix('notebooks/')}.ipynb")
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []):
            if button.get("url") == old:
                button["url"] = new


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", _colab_button, priority=600)  # after sphinx-book-theme's (501)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    sys.exit(main())
