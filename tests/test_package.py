"""The package's shape: each module imports alone, no module imports another inside a function, the
import graph has no cycle, ``import repmlp_lite`` leaves the book's libraries alone, modules stay short,
nothing imports torchvision."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "repmlp_lite"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _package_imports(node: ast.AST) -> set[str]:
    """The package modules an import statement names (``from . import x``, ``from .x import y``,
    ``import repmlp_lite.x``); empty for any other import."""
    if isinstance(node, ast.ImportFrom):
        if node.level == 0 and not (node.module or "").startswith("repmlp_lite"):
            return set()
        base = (node.module or "").removeprefix("repmlp_lite").strip(".")
        if base:
            return {base.split(".")[0]}
        return {alias.name.split(".")[0] for alias in node.names}
    if isinstance(node, ast.Import):
        return {a.name.split(".")[1] for a in node.names if a.name.startswith("repmlp_lite.")}
    return set()


def _graph() -> dict[str, set[str]]:
    """``{module: the package modules it imports at its top level}``."""
    graph = {}
    for name in MODULES:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        graph[name] = set().union(*(_package_imports(node) for node in tree.body)) - {name}
    return graph


def test_no_package_import_inside_a_function():
    found = []
    for name in [*MODULES, "__init__"]:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found += [f"{name}.{fn.name}: {sorted(_package_imports(n))}" for n in ast.walk(fn) if _package_imports(n)]
    assert not found, "imports of package modules inside functions or classes: " + "; ".join(found)


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    assert set().union(*graph.values()) <= set(MODULES), "an import names a module that does not exist"
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            pytest.fail("import cycle: " + " -> ".join((*path[path.index(name):], name)))
        if name not in done:
            for child in sorted(graph[name]):
                visit(child, (*path, name))
            done.add(name)

    for name in MODULES:
        visit(name, ())


def test_the_graph_check_finds_a_cycle_and_an_import_in_a_function():
    """The checks above can fail: a cycle and an import inside a function are seen."""
    inner = ast.parse("def f():\n    from .bench import x\n").body[0]
    assert [_package_imports(n) for n in ast.walk(inner) if _package_imports(n)] == [{"bench"}]
    assert _package_imports(ast.parse("from . import fast_forward, style").body[0]) == {"fast_forward", "style"}
    assert _package_imports(ast.parse("import numpy as np").body[0]) == set()


def test_every_module_imports_alone_in_a_fresh_interpreter():
    script = (
        "import importlib, sys\n"
        f"failed = []\nfor name in {MODULES!r}:\n"
        "    for key in [k for k in sys.modules if k == 'repmlp_lite' or k.startswith('repmlp_lite.')]:\n"
        "        del sys.modules[key]\n"
        "    try:\n"
        "        importlib.import_module('repmlp_lite.' + name)\n"
        "    except Exception as error:\n"
        "        failed.append(f'{name}: {error!r}')\n"
        "    else:\n"
        "        assert 'repmlp_lite.' + name in sys.modules\n"
        "print('\\n'.join(failed))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_importing_the_package_leaves_the_books_libraries_alone():
    books = "('pandas', 'ipywidgets', 'onnx', 'onnxruntime', 'matplotlib', 'sklearn', 'torchvision')"
    script = f"import sys, repmlp_lite; print(sorted(m for m in {books} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_modules_are_short():
    lines = {name: len((PACKAGE / f"{name}.py").read_text().splitlines()) for name in [*MODULES, "__init__"]}
    assert lines["block"] < 320, "block.py is the paper's Sec. 3: keep it readable in one sitting"
    assert not {name: n for name, n in lines.items() if n > 500}


def test_nothing_imports_torchvision():
    """No torchvision anywhere (no CPU build of it here; CIFAR is read in its own format): not the package,
    not a chapter, not a test."""
    root = PACKAGE.parent
    pattern = re.compile(r"^\s*(import|from)\s+torchvision\b", re.M)
    sources = {p: p.read_text() for p in [*PACKAGE.glob("*.py"), *(root / "tests").glob("*.py")]}
    for notebook in (root / "notebooks").glob("*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        sources[notebook] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert not [str(p.relative_to(root)) for p, text in sources.items() if pattern.search(text)]
    assert pattern.search("x = 1\nfrom torchvision.datasets import CIFAR10\n")  # the check can fail


def test_every_file_the_package_reads_is_in_its_wheel():
    """Files beside the modules (the identity explorer's script and style) are read at run time: the
    package data of pyproject.toml must name them, or an install from git (Colab) would lack them."""
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()  # (tomllib is Python 3.11+; 3.10 is supported)
    section = re.search(r"^\[tool\.setuptools\.package-data\]\n(?:#.*\n)*repmlp_lite = (\[.*\])$", pyproject, re.M)
    assert section, "pyproject.toml has no [tool.setuptools.package-data] for repmlp_lite"
    patterns = ast.literal_eval(section.group(1))
    data = [p.name for p in PACKAGE.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert data, "no data file found: the check would pass vacuously"
    assert not [name for name in data if not any(Path(name).match(pattern) for pattern in patterns)]

