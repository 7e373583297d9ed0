"""Every chapter's install cell: what a chapter needs in Colab (or a fresh kernel), never a torch.

The cell installs, where ``import repmlp_lite`` fails, the package from the repository without its
dependencies (so pip never replaces the torch already there, nor the torchvision built for it),
then the library's other dependencies and the requirements of the extras the chapter needs, as
``pyproject.toml`` declares them. Those extras are among :data:`READER_EXTRAS`: the first always,
each other one when the chapter imports one of its modules, in its own code or through
``repmlp_lite``'s modules (chapter 6's ONNX export brings ``[onnx]``). The book's build tools and
the tests (``[book]``, ``[lab]``, ``[test]``) are never installed there.

``book/_ext/colab_copies.py`` writes the cell into ``notebooks/`` (tagged ``remove-cell``: the HTML
book, built where everything is installed, drops it) and into the Colab copies.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import tomllib
from IPython.core.inputtransformer2 import TransformerManager

INSTALL_MARKER = "# Colab or a fresh kernel: install repmlp_lite"
PACKAGE = "repmlp_lite"
# The extras a reader's kernel may need, from pyproject.toml: the chapters' libraries, then the ONNX chapter's.
READER_EXTRAS = ("chapters", "onnx")
NEVER_INSTALLED = "torch"  # the library's dependency that the cell leaves to the machine
REQUIREMENT_NAME = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[(?P<extras>[^\]]*)\])?")


def requirement_name(requirement: str) -> str:
    """A requirement's distribution name, normalised (``"Jupyter_Book>=1"`` -> ``"jupyter-book"``)."""
    match = REQUIREMENT_NAME.match(requirement)
    if not match:
        raise ValueError(f"pyproject.toml: cannot read the requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group("name")).lower()


def pyproject(root: Path) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def extra_requirements(project: dict, extra: str) -> list[str]:
    """The requirements of one of pyproject.toml's extras, with those of the extras it names in turn
    (``"repmlp_lite[chapters]"``)."""
    declared = project.get("optional-dependencies", {})
    if extra not in declared:
        raise ValueError(f"pyproject.toml declares no extra {extra!r} (it has {sorted(declared)})")
    out: list[str] = []
    for requirement in declared[extra]:
        if requirement_name(requirement) == requirement_name(PACKAGE):
            for inner in REQUIREMENT_NAME.match(requirement).group("extras").split(","):
                out += [r for r in extra_requirements(project, inner.strip()) if r not in out]
        elif requirement not in out:
            out.append(requirement)
    return out


def reader_requirements(project: dict, extras: list[str]) -> list[str]:
    """What the cell installs after the package: its dependencies but torch, then ``extras``' requirements."""
    out = [r for r in project["dependencies"] if requirement_name(r) != NEVER_INSTALLED]
    for extra in extras:
        out += [r for r in extra_requirements(project, extra) if r not in out]
    return out


def _python(source: str) -> ast.Module:
    """A code cell (IPython magics and all) as a Python syntax tree."""
    return ast.parse(TransformerManager().transform_cell(source))


def _imports(tree: ast.Module) -> set[str]:
    """The modules ``tree`` imports, by absolute name; a relative import is one of ``repmlp_lite``'s
    (a flat package), and ``from m import x`` also names ``m.x`` (a submodule or not)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(filter(None, [PACKAGE if node.level else None, node.module]))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def imported_top_levels(code_cells: list[str], root: Path) -> set[str]:
    """The top-level modules a chapter's code imports, directly or through ``repmlp_lite``'s modules."""
    todo = set().union(*(_imports(_python(source)) for source in code_cells))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        if parts[0] != PACKAGE:
            continue
        files = [root / PACKAGE / "__init__.py"] + ([root / PACKAGE / f"{parts[1]}.py"] if len(parts) > 1 else [])
        for path in files:
            if path.is_file():
                todo |= _imports(ast.parse(path.read_text(encoding="utf-8")))
    return {name.split(".")[0] for name in seen}


def chapter_extras(code_cells: list[str], root: Path) -> list[str]:
    """The extras a chapter needs: the first of :data:`READER_EXTRAS`, and each other one whose
    requirements the chapter imports (a distribution's module named as the distribution)."""
    project = pyproject(root)
    imported = imported_top_levels(code_cells, root)
    needed = [
        extra for extra in READER_EXTRAS[1:]
        if any(requirement_name(r).replace("-", "_") in imported for r in extra_requirements(project, extra))
    ]
    return [READER_EXTRAS[0], *needed]


def install_cell(url: str, extras: list[str], requirements: list[str]) -> str:
    """The install cell's code: ``repmlp_lite`` from ``url`` without dependencies, then ``requirements``
    (:func:`reader_requirements` of ``extras``), only where ``import repmlp_lite`` fails."""
    packages = " ".join(shlex.quote(r) for r in requirements)
    lines = [
        f"{INSTALL_MARKER} where missing, never replacing torch:",
        "# the package without its dependencies, then pyproject.toml's dependencies but torch",
        f"# and its extras [{', '.join(extras)}] (written by book/_ext/colab_install.py).",
        f'BOOK_REPO = "{url}"',
        "CHAPTER_NEEDS = (",
        *[f'    "{chunk}"' for chunk in _chunks(packages, 70)],
        ")",
        "try:",
        f"    import {PACKAGE}",
        "except ImportError:",
        f'    %pip install -q --no-deps "{PACKAGE} @ git+{{BOOK_REPO}}"',
        "    %pip install -q {CHAPTER_NEEDS}",
        "    try:",
        f"        import {PACKAGE}",
        "    except ImportError as error:",
        f'        print(f"{PACKAGE} is not importable ({{error}}). Offline: connect "',
        '              "(Colab: Runtime > Restart session) and run this cell again. "',
        '              "No torch: install the torch for your machine first (pytorch.org).")',
    ]
    return "\n".join(lines)


def _chunks(words: str, width: int) -> list[str]:
    """``words`` cut into pieces of at most about ``width`` characters, each but the first starting with
    the space that separated it (so that the pieces, concatenated as string literals, give ``words``)."""
    pieces: list[str] = []
    for word in words.split(" "):
        if pieces and len(pieces[-1]) + 1 + len(word) <= width:
            pieces[-1] += " " + word
        else:
            pieces.append(word if not pieces else " " + word)
    return pieces
