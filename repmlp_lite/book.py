"""Helpers for the book's pages: numbers computed in a cell, quoted in the prose.

:func:`glue` binds a value to a name in the notebook's namespace, so that a sentence can quote it
with an inline expression, ``{eval}`name```, and the number in the text is always the one the cell
computed. The same role is filled in by the HTML book (myst-nb, with ``nb_execution_mode: inline``)
and by JupyterLab with ``jupyterlab-myst``, both from the value's ``text/plain`` form. Colab, which
renders no MyST, opens the chapters' copies in ``colab/`` (``book/_ext/colab_copies.py``), where such
a paragraph is a cell that displays it with the values.

:func:`static_page` tells a cell whether it runs for the HTML book, where a control that needs a
running kernel could not move. :func:`results_location` says where a chapter reads the repository's
committed measurements (``results/``) from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from IPython import get_ipython

# Set by the book build (book/_ext/offline_assets.py) and inherited by the kernels it starts.
STATIC_PAGE_ENV = "REPMLP_STATIC_PAGE"


class Text(str):
    """A string that IPython shows as itself: no quotes around it in an ``{eval}`` role.

    IPython's ``text/plain`` form of a ``str`` is its ``repr`` (``'0.93'``); both renderers of the
    book's inline roles use that form.
    """

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def glue(name: str, value: Any) -> Any:
    """Make ``value`` quotable in the notebook's prose as ``{eval}`name```; returns ``value``.

    Glue strings formatted in the cell (``f"{x:.2f}"``): a string is bound as :class:`Text`, so it
    shows without quotes. ``name`` must be a Python identifier that no other line of the notebook
    assigns (``tests/test_glue.py`` checks the chapters). Outside IPython (a plain script) nothing
    is bound.
    """
    if not name.isidentifier():
        raise ValueError(f"glue: name must be a Python identifier (the prose quotes it), got {name!r}")
    shell = get_ipython()
    if shell is not None:
        shell.user_ns[name] = Text(value) if isinstance(value, str) else value
    return value


def static_page() -> bool:
    """True while a cell runs for the HTML book (the build sets :data:`STATIC_PAGE_ENV` to ``1``)."""
    return os.environ.get(STATIC_PAGE_ENV) == "1"


def results_location(repository: str) -> str:
    """Where the repository's ``results/`` folder is read from: the checkout's, beside ``notebooks/`` where
    the chapters run (the HTML book, JupyterLab), else ``repository`` (a GitHub URL, the install cell's)
    on GitHub's raw-file server, default branch (Colab, which opens the chapter alone). ``pandas`` reads
    files from either."""
    local = Path.cwd().parent / "results"
    if local.is_dir():
        return str(local)
    return repository.rstrip("/").replace("https://github.com/", "https://raw.githubusercontent.com/") + "/HEAD/results"
