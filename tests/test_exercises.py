"""Every chapter's exercises have solutions that run where they stand (a static check; nbmake runs them).

The layout each chapter follows: the exercises, each linking to its solution
(``{ref}`sol-X-Y```), then a "Solutions" section at the end of the chapter with, for each
exercise, a heading labelled ``(sol-X-Y)=`` and the solution's code in code cells tagged
``solution`` and ``hide-input`` (myst-nb folds them behind "Show code") with
``"jupyter": {"source_hidden": true}`` (JupyterLab collapses them). Because the solution cells come
after every other code cell, nbmake and the book build execute them after the whole chapter, in the
chapter's kernel: a solution that reused a variable a later cell overwrote would fail there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

EXERCISE = re.compile(r"\{admonition\} Exercise (\d+[a-z]?\.\d+):")
SOLUTION_LABEL = re.compile(r"^\(sol-(\d+[a-z]?)-(\d+)\)=$", re.M)
SOLUTION_LINK = re.compile(r"\{ref\}`sol-(\d+[a-z]?)-(\d+)`")


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _is_solution_code(cell: dict) -> bool:
    return cell["cell_type"] == "code" and "solution" in cell["metadata"].get("tags", [])


def _problems(path: Path) -> list[str]:
    """What is wrong with the exercises and solutions of one chapter (empty when nothing is)."""
    cells = _cells(path)
    problems = []
    exercises = [m for c in cells if c["cell_type"] == "markdown" for m in EXERCISE.findall(_source(c))]
    if not exercises:  # a numbered chapter has exercises; an appendix (no number) need not
        return [f"{path.name}: no exercises"] if re.match(r"\d", path.name) else []
    text = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    if "dropdown solution" in text:
        problems.append(f"{path.name}: a solution is still a markdown dropdown (its code would not run)")
    labels = {f"{a}.{b}": i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
              for a, b in SOLUTION_LABEL.findall(_source(c))}
    links = {f"{a}.{b}" for a, b in SOLUTION_LINK.findall(text)}
    last_chapter_code = max(
        (i for i, c in enumerate(cells) if c["cell_type"] == "code" and not _is_solution_code(c)), default=-1
    )
    for number in exercises:
        if number not in labels:
            label = "sol-" + number.replace(".", "-")
            problems.append(f"{path.name}: exercise {number} has no solution labelled {label}")
        elif labels[number] < last_chapter_code:
            problems.append(f"{path.name}: solution {number} comes before the chapter's last code cell")
        if number not in links:
            problems.append(f"{path.name}: exercise {number} does not link to its solution")
    for i, cell in enumerate(cells):
        if not _is_solution_code(cell):
            continue
        if i < last_chapter_code:
            problems.append(f"{path.name}: solution code cell {i} comes before the chapter's last code cell")
        if "hide-input" not in cell["metadata"].get("tags", []):
            problems.append(f"{path.name}: solution code cell {i} is not tagged hide-input")
        if not cell["metadata"].get("jupyter", {}).get("source_hidden"):
            problems.append(f"{path.name}: solution code cell {i} is not collapsed in JupyterLab")
    first_solution = min(labels.values(), default=len(cells))
    if any(c["cell_type"] == "code" and not _is_solution_code(c) for c in cells[first_solution:]):
        problems.append(f"{path.name}: an untagged code cell sits among the solutions")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solutions_run_after_the_chapter(path: Path) -> None:
    """Each exercise links to a solution at the chapter's end, whose code cells are hidden and run last."""
    problems = _problems(path)
    assert not problems, "\n".join(problems)


def test_the_check_finds_a_solution_left_in_a_dropdown(tmp_path: Path) -> None:
    """The check fails a chapter whose solution is still a dropdown, or whose solution code is not hidden."""
    chapter = {
        "cells": [
            {"cell_type": "code", "metadata": {}, "source": ["x = 1\n"]},
            {"cell_type": "markdown", "metadata": {}, "source": [
                "```{admonition} Exercise 9.1: Something\n:class: exercise\nDo it.\n```\n",
                "```{admonition} Solution\n:class: dropdown solution\nprint(x)\n```\n",
            ]},
            {"cell_type": "markdown", "metadata": {}, "source": ["(sol-9-2)=\n### Solution 9.2\n"]},
            {"cell_type": "code", "metadata": {"tags": ["solution"]}, "source": ["print(x)\n"]},
        ]
    }
    path = tmp_path / "09_x.ipynb"
    path.write_text(json.dumps(chapter), encoding="utf-8")
    problems = "\n".join(_problems(path))
    assert "still a markdown dropdown" in problems
    assert "exercise 9.1 has no solution" in problems
    assert "does not link" in problems
    assert "not tagged hide-input" in problems
    assert "not collapsed" in problems
