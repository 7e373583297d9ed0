"""Helpers for the book's pages: numbers computed in a cell, quoted in the prose.

:func:`glue` hands a value to myst-nb (the book's builder), so that a sentence can quote it with
``{glue:text}`name``` and the number in the text is always the one the cell computed. In Colab or a
plain Jupyter kernel without myst-nb, the value is printed instead (or nothing, for ``display=False``).
"""

from __future__ import annotations

from typing import Any

try:
    from myst_nb import glue as _myst_glue
except ImportError:  # Colab: no myst-nb, no book
    _myst_glue = None


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Make ``value`` quotable in the book's text as ``{glue:text}`name```; returns ``value``.

    Glue strings formatted in the cell (``f"{x:.2f}"``) and quote them with ``{glue:text}``: the
    plain ``{glue:}`` role shows a string's repr, quotes included.
    """
    if _myst_glue is not None:
        _myst_glue(name, value, display=display)
    elif display:
        print(f"{name} = {value}")
    return value
