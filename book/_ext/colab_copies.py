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
* a paragraph that quotes computed numbers (``{eval}`name```) becomes a code cell shown as a form
  (Colab hides its code): run, it displays the paragraph as Markdown with the numbers the cells above
  computed.

The repository URL lives in one place, ``_config.yml``'s ``repository.url``: this script also writes
it into every chapter's install cell (:func:`install_cell`), in ``notebooks/`` and in the copies.

A figure's caption lives in its cell's myst-nb metadata, which the HTML book turns into a numbered
caption but neither JupyterLab nor Colab shows. So this script also writes, after every figure cell
in ``notebooks/``, a markdown cell with "Fig. n: caption" (:func:`caption_cell`), tagged
``remove-cell`` (the HTML book drops it: its own caption is there) and ``figure-caption`` (so the
next run replaces it): JupyterLab shows it as written, Colab as plain Markdown.

Run from the repository root after editing a chapter (``tests/test_colab.py`` checks the copies are
up to date)::

    python book/_ext/colab_copies.py          # write notebooks' install cells and colab/*.ipynb
    python book/_ext/colab_copies.py --check  # exit 1 if anything would change

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

import yaml

ROOT = Path(__file__).resolve().parents[2]
COLAB_DIR = "colab"
COLAB = "https://colab.research.google.com/github"
INSTALL_MARKER = "# Colab or a fresh kernel: install repmlp_lite"

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


def install_cell(url: str) -> str:
    """Every chapter's first code cell: installs the package with the book's extras from ``url``."""
    return (
        f"{INSTALL_MARKER} and the book's extras where missing.\n"
        "# The URL is _config.yml's repository.url (python book/_ext/colab_copies.py)\n"
        f'BOOK_REPO = "{url}"\n'
        "try:\n"
        "    import repmlp_lite\n"
        "except ImportError:\n"
        '    %pip install -q "repmlp_lite[book] @ git+{BOOK_REPO}"\n'
        "    try:\n"
        "        import repmlp_lite\n"
        "    except ImportError:\n"
        '        print(f"Could not install repmlp_lite from {BOOK_REPO}: connect to the "\n'
        '              "internet (Colab: Runtime > Restart session), then run this cell again.")'
    )


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

    def __init__(self, root: Path = ROOT) -> None:
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

    def _index(self, page: str, text: str) -> None:
        self.texts[page] = text
        self.titles[page] = _title(text, page)
        for match in re.finditer(r"^\(([\w-]+)\)=[ \t]*\n+#+[ \t]+(.+)$", text, re.M):
            self.sections[match.group(1)] = match.group(2).strip()

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
    raise ValueError(f"{page}: no plain-Markdown form for the role {{{name}}}`{body}`")


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
    """One markdown cell's MyST, as CommonMark (``{eval}`` roles are left for :func:`colab_cells`)."""
    text = TARGET.sub("", text)
    text = _directives(text, page)
    text = _equations(text, book, page)
    def role(m: re.Match) -> str:
        return m.group(0) if m.group("name") == "eval" else _role(book, page, m.group("name"), m.group("body"))

    return ROLE.sub(role, text)


def _eval_cell(markdown: str, page: str) -> dict[str, Any]:
    """A form cell that displays ``markdown`` with each ``{eval}`name``` filled in from the kernel."""
    if '"""' in markdown or markdown.rstrip().endswith("\\"):
        raise ValueError(f"{page}: this paragraph with {{eval}} roles fits no raw string: {markdown[:80]!r}")
    names: list[str] = []

    def field(match: re.Match) -> str:
        names.append(match.group("body"))
        return "\0" + match.group("body") + "\1"

    template = ROLE.sub(field, markdown).replace("{", "{{").replace("}", "}}")
    template = template.replace("\0", "{").replace("\1", "}")
    source = (
        "#@title Show this paragraph with the numbers computed above\n"
        "from IPython.display import Markdown\n"
        f'Markdown(rf"""{template}""")'
    )
    return {"cell_type": "code", "execution_count": None, "metadata": {"cellView": "form"}, "outputs": [],
            "source": _lines(source)}


def _folded_solution(text: str) -> str:
    """A solution's section (``(sol-X-Y)=`` then ``### Solution X.Y: title``) as a closed ``<details>``."""
    match = SOLUTION_HEADING.match(TARGET.sub("", text).lstrip("\n"))
    if not match:
        return text
    body = match.group("body").strip("\n")
    return f"<details>\n<summary><b>{match.group('title')}</b></summary>\n\n{body}\n\n</details>\n"


def colab_cells(nb: dict, book: Book, page: str) -> list[dict]:
    cells = []
    solution = ""  # the title of the solution section the cells belong to, once in the solutions
    for cell in nb["cells"]:
        cell = copy.deepcopy(cell)
        source = _source(cell)
        if cell["cell_type"] == "code" and source.startswith(INSTALL_MARKER):
            cell["source"] = _lines(install_cell(book.url))
        elif cell["cell_type"] == "code" and "solution" in cell["metadata"].get("tags", []):
            # a form: Colab shows its title and folds the code, which still runs
            cell["source"] = _lines(f"#@title {solution}: the code\n{source}")
            cell["metadata"]["cellView"] = "form"
        elif cell["cell_type"] == "markdown":
            heading = SOLUTION_HEADING.match(TARGET.sub("", source).lstrip("\n"))
            if heading:
                solution = heading.group("title")
                source = _folded_solution(source)
            text = plain_markdown(source, book, page)
            if any(m.group("name") == "eval" for m in ROLE.finditer(text)):
                cell = _eval_cell(text, page) | ({"id": cell["id"]} if "id" in cell else {})
            else:
                cell["source"] = _lines(text)
        if CAPTION_TAG in cell["metadata"].get("tags", []):
            cell["metadata"].pop("tags")  # the HTML book's tags mean nothing to Colab
        cells.append(cell)
    return cells


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


def outputs(root: Path = ROOT) -> dict[Path, str]:
    """Every file this script writes, with its text: the chapters (install cells) and their copies."""
    book = Book(root)
    files: dict[Path, str] = {}
    for path in book.notebooks:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code" and _source(cell).startswith(INSTALL_MARKER):
                cell["source"] = _lines(install_cell(book.url))
        nb["cells"] = with_captions(nb["cells"], book)
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


def stale(root: Path = ROOT) -> list[Path]:
    """The files :func:`outputs` would change (missing, different), and copies of no chapter."""
    files = outputs(root)
    changed = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    orphans = [path for path in sorted((root / COLAB_DIR).glob("*.ipynb")) if path not in files]
    return changed + orphans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if any file would change")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"out of date: {path.relative_to(ROOT)}")
        return 1 if old else 0
    (ROOT / COLAB_DIR).mkdir(exist_ok=True)
    files = outputs()
    for path in stale():
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
