"""Helpers for the book's pages: numbers computed in a cell, quoted in the prose.

:func:`glue` binds a value to a name in the notebook's namespace, so that a sentence can quote it
with an inline expression, ``{eval}`name```, and the number in the text is always the one the cell
computed. The same role is filled in by the HTML book (myst-nb, with ``nb_execution_mode: inline``)
and by JupyterLab with ``jupyterlab-myst``, both from the value's ``text/plain`` form. Colab, which
renders no MyST, opens the chapters' copies in ``colab/`` (``book/_ext/colab_copies.py``), whose
Markdown carries the values the book's build glued: during the build, :func:`glue` also appends each
value's ``text/plain`` form to the file that :data:`GLUE_RECORD_ENV` names.

:func:`static_page` tells a cell whether it runs for the HTML book, where a control that needs a
running kernel could not move.
"""

from __future__ import annotations

import json
import os
from typing import Any

from IPython import get_ipython

# Set by the book build (book/_ext/offline_assets.py) and inherited by the kernels it starts.
STATIC_PAGE_ENV = "REPMLP_STATIC_PAGE"
# Set by the book build (book/_ext/colab_copies.py) for each chapter's kernel: a JSON-lines file that
# records every glued value, for the chapter's Colab copy.
GLUE_RECORD_ENV = "REPMLP_GLUE_RECORD"


class Text(str):
    """A string that IPython shows as itself: no quotes around it in an ``{eval}`` role.

    IPython's ``text/plain`` form of a ``str`` is its ``repr`` (``'0.93'``); both renderers of the
    book's inline roles use that form.
    """

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def glue(name: str, value: Any, *, machine_dependent: bool = False) -> Any:
    """Make ``value`` quotable in the notebook's prose as ``{eval}`name```; returns ``value``.

    Glue strings formatted in the cell (``f"{x:.2f}"``): a string is bound as :class:`Text`, so it
    shows without quotes. ``name`` must be a Python identifier that no other line of the notebook
    assigns (``tests/test_glue.py`` checks the chapters). ``machine_dependent``: the value depends on
    the machine that ran the cell (a timing or a ratio of timings, a rounding error, a trained
    accuracy, a thread count, the device, a setting its environment chooses), so the Colab copy
    marks the build's value as such. Outside IPython (a plain script) nothing is bound.
    """
    if not name.isidentifier():
        raise ValueError(f"glue: name must be a Python identifier (the prose quotes it), got {name!r}")
    shell = get_ipython()
    if shell is None:
        return value
    bound = Text(value) if isinstance(value, str) else value
    shell.user_ns[name] = bound
    record = os.environ.get(GLUE_RECORD_ENV)
    if record:
        text = shell.display_formatter.format(bound)[0]["text/plain"]
        with open(record, "a", encoding="utf-8") as file:
            file.write(json.dumps({"name": name, "text": text, "machine_dependent": machine_dependent}) + "\n")
    return value


def static_page() -> bool:
    """True while a cell runs for the HTML book (the build sets :data:`STATIC_PAGE_ENV` to ``1``)."""
    return os.environ.get(STATIC_PAGE_ENV) == "1"
