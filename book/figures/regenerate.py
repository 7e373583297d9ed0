"""Redraw the book's committed figures from the package: ``python book/figures/regenerate.py``.

``overview.png`` (the introduction's opening figure) is :func:`repmlp_lite.overview.save_overview`;
``tests/test_overview.py`` checks that the committed file is what the function draws today.
"""

from pathlib import Path

from repmlp_lite.overview import save_overview

if __name__ == "__main__":
    save_overview(str(Path(__file__).with_name("overview.png")))
