"""The book's one figure style: figures drawn for the content column of the HTML book.

The column is 688 px wide at a 1280 px window (measured by tests/test_browser.py): a figure is
:data:`COLUMN_WIDTH_IN` inches at :data:`FIGURE_DPI`, so it is shown at its natural size and a 9 pt
label is about 12 px on screen. Chapters call :func:`use_book_style` in their setup cell; the
plots (:mod:`repmlp_lite.viz`), the diagrams (:mod:`repmlp_lite.diagram`) and the explorers
(:mod:`repmlp_lite.explorers`) size their figures with :func:`column_figsize`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image as PILImage

FIGURE_DPI = 100
COLUMN_WIDTH_IN = 6.8
BOOK_STYLE: dict[str, object] = {
    "figure.dpi": FIGURE_DPI,
    "savefig.dpi": FIGURE_DPI,
    "figure.figsize": (COLUMN_WIDTH_IN, 0.62 * COLUMN_WIDTH_IN),
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "legend.fontsize": 8.5,
    "figure.titlesize": 10,
}


def use_book_style() -> None:
    """Set matplotlib's defaults to the book's style (:data:`BOOK_STYLE`)."""
    matplotlib.rcParams.update(BOOK_STYLE)


def column_figsize(height_ratio: float, width_fraction: float = 1.0) -> tuple[float, float]:
    """``(width, height)`` in inches for a figure ``width_fraction`` of the column wide."""
    width = COLUMN_WIDTH_IN * width_fraction
    return width, width * height_ratio


@contextlib.contextmanager
def book_defaults() -> Iterator[None]:
    """Matplotlib's defaults plus :data:`BOOK_STYLE`, whatever the caller set (e.g. Jupyter's inline
    backend makes figures transparent): the static explorers' pictures are the same bytes everywhere."""
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # keeps the backend
        use_book_style()
        yield


def png_bytes(fig: Figure, colors: int | None = None) -> bytes:
    """The figure rendered to PNG bytes at :data:`FIGURE_DPI`, never wider than the book's column.

    ``colors``: reduce the picture to a palette of at most that many colours (about 3x smaller for
    the flat-coloured matrices drawn here); ``None`` keeps full RGBA. Same figure, same bytes.
    """
    dpi = min(FIGURE_DPI, COLUMN_WIDTH_IN * FIGURE_DPI / fig.get_figwidth())
    if colors is None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        return buffer.getvalue()
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = PILImage.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
    buffer = io.BytesIO()
    rgb.quantize(colors=colors).save(buffer, format="png", optimize=True)
    return buffer.getvalue()
