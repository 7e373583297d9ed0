"""Every link to the authors' code names a pinned commit that has the linked file (offline).

The authors' repository (DingXiaoH/RepMLP) changed under the book: ``repmlp.py``, the first paper's
block, was deleted from its ``main`` branch on 2021-12-24, when ``repmlpnet.py`` (RepMLPNet) took its
place, so a link to ``blob/main/repmlp.py`` leads nowhere. The book therefore links the authors' code at
two commits, :data:`PINNED` (``book/references.md`` says which and why), never at a branch.
``tests/authors_code/<sha>.txt`` holds each pinned commit's file list, the output of
``git ls-tree -r --name-only <sha>`` and nothing else from the repository, so the check needs no network.

Checked: every ``github.com/DingXiaoH/...`` link in the chapters (every cell), the book's pages, the
README, ``results/`` and the package's source (its docstrings). A link must be ``.../RepMLP/blob/<sha>/<file>``
or ``.../RepMLP/tree/<sha>[/<folder>]`` with a pinned ``<sha>`` and a path that commit has, or an issue
(``.../RepMLP/issues/<n>``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FILE_LISTS = Path(__file__).resolve().parent / "authors_code"
PINNED = {
    # the last commit with the first paper's code (repmlp.py, repmlp_blocks.py, repmlp_resnet.py, ...)
    "4b3e347422797747ca98e8c2b0b06a3d38c68244": "RepMLP, first paper (2021-12-23)",
    # the newest commit: RepMLPNet (repmlpnet.py) and its training script (config.py, main_repmlp.py, ...)
    "3eff13fa0257af28663880d870f327d665f0a8e2": "RepMLPNet (2023-02-10)",
}
LINK = re.compile(r"(?:https?://)?(?:www\.)?github\.com/DingXiaoH\b[^\s)\]>\"'`,;]*")
SOURCES = ["notebooks/*.ipynb", "book/*.md", "README.md", "results/*.md", "repmlp_lite/*.py"]


def _files(sha: str) -> set[str]:
    return set((FILE_LISTS / f"{sha}.txt").read_text(encoding="utf-8").split())


def link_problem(url: str) -> str | None:
    """What is wrong with one link to the authors' GitHub account, or None when it is sound."""
    path = re.sub(r"^(?:https?://)?(?:www\.)?github\.com/", "", url).rstrip(".").split("#")[0]
    parts = path.split("/")
    if parts[:2] != ["DingXiaoH", "RepMLP"]:
        return "not the RepMLP repository"
    kind, ref, rest = (parts[2:] + [None, None])[:2] + ["/".join(parts[4:])]
    if kind == "issues" and ref is not None and ref.isdigit() and not rest:
        return None
    if kind not in ("blob", "tree"):
        return "names no commit (the repository's front page shows its current branch)"
    if ref not in PINNED:
        return f"{ref!r} is not a pinned commit (a branch moves; pin one of {sorted(PINNED)})"
    files = _files(ref)
    if kind == "blob" and rest not in files:
        return f"commit {ref[:7]} has no file {rest!r}"
    if kind == "tree" and rest and not any(f.startswith(rest + "/") for f in files):
        return f"commit {ref[:7]} has no folder {rest!r}"
    return None


def _links() -> list[tuple[str, str]]:
    found = []
    for pattern in SOURCES:
        for path in sorted(REPO.glob(pattern)):
            text = path.read_text(encoding="utf-8")
            found += [(str(path.relative_to(REPO)), m.group(0)) for m in LINK.finditer(text)]
    return found


def test_pinned_file_lists_are_stored():
    for sha in PINNED:
        files = _files(sha)
        assert "README.md" in files and len(files) > 5, f"{sha}: not a file list"
    assert "repmlp.py" in _files("4b3e347422797747ca98e8c2b0b06a3d38c68244")
    assert "repmlpnet.py" in _files("3eff13fa0257af28663880d870f327d665f0a8e2")


def test_the_book_links_the_authors_code():
    """The chapters quote the authors' code: the check below must have links to check."""
    linked = {url for _, url in _links()}
    assert any("/repmlp.py" in url for url in linked), "no link to the first paper's repmlp.py"
    assert any("/repmlpnet.py" in url for url in linked), "no link to RepMLPNet's repmlpnet.py"


@pytest.mark.parametrize("where, url", _links())
def test_link_names_a_pinned_commit_that_has_the_file(where, url):
    problem = link_problem(url)
    assert problem is None, f"{where}: {url}: {problem}"


def test_references_name_the_pinned_commits():
    text = (REPO / "book" / "references.md").read_text(encoding="utf-8")
    for sha in PINNED:
        assert sha in text, f"book/references.md does not name the pinned commit {sha}"


def test_the_link_check_catches_what_it_names():
    first, net = PINNED
    assert link_problem(f"https://github.com/DingXiaoH/RepMLP/blob/{first}/repmlp.py") is None
    assert link_problem(f"https://github.com/DingXiaoH/RepMLP/tree/{net}") is None
    assert link_problem(f"https://github.com/DingXiaoH/RepMLP/tree/{net}/data") is None
    assert link_problem("https://github.com/DingXiaoH/RepMLP/issues/6") is None
    assert "has no file" in link_problem(f"https://github.com/DingXiaoH/RepMLP/blob/{net}/repmlp.py")
    assert "has no folder" in link_problem(f"https://github.com/DingXiaoH/RepMLP/tree/{first}/data")
    assert "not a pinned commit" in link_problem("https://github.com/DingXiaoH/RepMLP/blob/main/repmlp.py")
    assert "names no commit" in link_problem("https://github.com/DingXiaoH/RepMLP")
    assert "not the RepMLP repository" in link_problem("github.com/DingXiaoH/RepVGG")
    assert [m.group(0) for m in LINK.finditer("([code](https://github.com/DingXiaoH/RepMLP/blob/x/a.py)).")] == [
        "https://github.com/DingXiaoH/RepMLP/blob/x/a.py"
    ]
