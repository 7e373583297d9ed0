"""``repmlp_lite.book``: values bound for the prose's ``{eval}`name``` roles, and the chapters' use of them.

The chapters quote computed values with inline ``{eval}`name``` roles, which myst-nb (inline execution)
and jupyterlab-myst evaluate in the chapter's kernel; :func:`repmlp_lite.book.glue` binds the names.
Static checks on every notebook: no glue role is left, every role names a glued value bound in an
earlier cell, and no glued name is also a variable of the chapter (binding it would overwrite that
variable with its formatted text).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from IPython.core.inputtransformer2 import TransformerManager
from IPython.testing.globalipapp import get_ipython

from repmlp_lite import book

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
EVAL = re.compile(r"\{eval\}`([^`]+)`")


def test_glue_binds_strings_without_quotes_and_numbers_as_they_are():
    shell = get_ipython()
    assert book.glue("acc_demo", "0.93") == "0.93"
    assert book.glue("count_demo", 360) == 360
    formatter = shell.display_formatter
    assert formatter.format(shell.user_ns["acc_demo"])[0]["text/plain"] == "0.93"  # not "'0.93'"
    assert formatter.format(shell.user_ns["count_demo"])[0]["text/plain"] == "360"
    assert set(formatter.format(shell.user_ns["acc_demo"])[0]) == {"text/plain"}


def test_glue_records_each_value_where_the_book_build_asks(monkeypatch, tmp_path):
    """The build names a file per chapter (book/_ext/glued_values.py); glue appends what the prose shows."""
    record = tmp_path / "chapter.jsonl"
    monkeypatch.setenv(book.GLUE_RECORD_ENV, str(record))
    book.glue("ms_demo", "1.25", machine_dependent=True)
    book.glue("count_demo", 360)
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert lines == [{"name": "ms_demo", "text": "1.25", "machine_dependent": True},
                     {"name": "count_demo", "text": "360", "machine_dependent": False}]
    monkeypatch.delenv(book.GLUE_RECORD_ENV)
    book.glue("count_demo", 361)
    assert len(record.read_text().splitlines()) == 2, "outside the build nothing is recorded"


def test_glue_rejects_a_name_no_role_can_quote():
    with pytest.raises(ValueError, match="name must be a Python identifier"):
        book.glue("max-err", "1e-7")


def test_static_page_follows_the_build_variable(monkeypatch):
    monkeypatch.delenv(book.STATIC_PAGE_ENV, raising=False)
    assert not book.static_page()
    monkeypatch.setenv(book.STATIC_PAGE_ENV, "1")
    assert book.static_page()


def _glue_calls_and_names(cells: list[dict]) -> tuple[dict[str, int], list[re.Pattern], set[str]]:
    """Constant glue names (first cell binding each), patterns of computed glue names, assigned names."""
    glued: dict[str, int] = {}
    patterns: list[re.Pattern] = []
    assigned: set[str] = set()
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse(TransformerManager().transform_cell("".join(cell["source"])))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "glue" and node.args:
                name = node.args[0]
                if isinstance(name, ast.Constant):
                    glued.setdefault(name.value, index)
                elif isinstance(name, ast.JoinedStr):
                    parts = [re.escape(p.value) if isinstance(p, ast.Constant) else r"\w+" for p in name.values]
                    patterns.append(re.compile("".join(parts)))
                else:  # a name computed in a loop: any identifier (the collision check still holds)
                    patterns.append(re.compile(r"\w+"))
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                assigned.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                assigned.add(node.name)
            elif isinstance(node, ast.alias):
                assigned.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.arg):
                assigned.add(node.arg)
    return glued, patterns, assigned


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_roles_quote_glued_names_bound_above(path):
    cells = json.loads(path.read_text())["cells"]
    glued, patterns, assigned = _glue_calls_and_names(cells)
    problems = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        problems += [f"cell {index}: a glue role is left: {m.group(0)}" for m in re.finditer(r"\{glue[:\w]*\}`", text)]
        for name in EVAL.findall(text):
            if name in glued:
                if glued[name] > index:
                    problems.append(f"cell {index}: {{eval}}`{name}` is glued later, in cell {glued[name]}")
            elif any(p.fullmatch(name) for p in patterns):
                if name in assigned:
                    problems.append(f"cell {index}: {{eval}}`{name}` is glued and also a variable")
            else:
                problems.append(f"cell {index}: {{eval}}`{name}` is not a glued name")
    problems += [f"glued name {name!r} is also a variable of the chapter" for name in sorted(set(glued) & assigned)]
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_the_static_checks_catch_a_collision():
    cells = [
        {"cell_type": "code", "source": ["x = 1.5\n", 'glue("x", f"{x:.1f}")\n', 'glue(f"err_{x}", "1")']},
        {"cell_type": "markdown", "source": ["{eval}`x` and {eval}`err_abc`"]},
    ]
    glued, patterns, assigned = _glue_calls_and_names(cells)
    assert glued == {"x": 0} and "x" in assigned and patterns[0].fullmatch("err_abc")
