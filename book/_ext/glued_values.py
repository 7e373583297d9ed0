"""The values the chapters glue, as the book's build computed them: what the Colab copies quote.

Colab renders no MyST and runs nothing before the reader does, so a chapter's Colab copy
(``book/_ext/colab_copies.py``) writes each ``{eval}`name``` of the prose as the value the book's
build computed. This module records those values and keeps the copies checkable:

* As a Sphinx extension (``_config.yml``, ``local_extensions``), it names, before each page is read,
  a file for the page's kernel: ``repmlp_lite.book.glue`` appends every value it binds there (its
  ``text/plain`` form, as the HTML book shows it, and whether it depends on the machine). When the
  build ends, the values of all pages are gathered into ``_build/glued_values.json``
  (:data:`BUILD_VALUES`), with the machine and date of the build. A name glued twice with two
  different values on one page is a build warning (``-W``: an error): the copy could not tell
  which one a paragraph quotes.
* ``python book/_ext/colab_copies.py --values _build/glued_values.json`` writes the copies with those
  values and stores the ones they quote in ``colab/build_values.json`` (:data:`COMMITTED_VALUES`,
  committed). Without ``--values`` (and with ``--check``) the copies are written from that committed
  file, so a rebuild that timed something differently never makes them out of date.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from sphinx.util import logging

from repmlp_lite.book import GLUE_RECORD_ENV
from repmlp_lite.measure import machine

BUILD_VALUES = Path("_build") / "glued_values.json"  # relative to the repository root
COMMITTED_VALUES = Path("colab") / "build_values.json"
logger = logging.getLogger(__name__)
_RECORDS = "glued"  # <build dir>/glued/<page>.jsonl: one line per glue call during the build

# {"built": {"machine": ..., "date": ...}, "pages": {page: {name: {"text": ..., "machine_dependent": ...}}}}
Values = dict[str, Any]


def read(path: Path) -> Values:
    """A values file (the build's or the committed one); a clear error where it is missing."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no glued values (build the book, `jupyter-book build . -W -n --keep-going`, "
            f"then run `python book/_ext/colab_copies.py --values {BUILD_VALUES}`)")
    return json.loads(path.read_text(encoding="utf-8"))


def dump(values: Values) -> str:
    return json.dumps(values, indent=1, ensure_ascii=False) + "\n"


def quoted(values: Values, names: dict[str, list[str]]) -> Values:
    """``values`` restricted to the ``names`` each page quotes (``page -> names``), in that order."""
    pages = {page: {name: values["pages"][page][name] for name in page_names
                    if name in values["pages"].get(page, {})}
             for page, page_names in names.items() if page_names}
    return {"built": values["built"], "pages": pages}


def _records_dir(app: Any) -> Path:
    return Path(app.outdir).parent / _RECORDS


def _name_record(app: Any, docname: str, source: list[str]) -> None:
    """Before ``docname`` is read (and its kernel started): the file its glue calls append to."""
    record = _records_dir(app) / f"{docname}.jsonl"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    os.environ[GLUE_RECORD_ENV] = str(record)


def _gather(app: Any, exception: Exception | None) -> None:
    """After a successful build: every page's records in one file, ``_build/glued_values.json``."""
    os.environ.pop(GLUE_RECORD_ENV, None)
    if exception is not None:
        return
    records = _records_dir(app)
    pages: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(records.rglob("*.jsonl")):
        page = path.relative_to(records).with_suffix("").as_posix()
        glued: dict[str, dict[str, Any]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            value = {"text": entry["text"], "machine_dependent": entry["machine_dependent"]}
            if glued.get(entry["name"], value) != value:
                logger.warning("%s: %r is glued twice with different values (%r, then %r): the Colab copy "
                               "cannot tell which one a paragraph quotes", page, entry["name"],
                               glued[entry["name"]]["text"], value["text"], type="glued_values")
            glued[entry["name"]] = value
        pages[page] = glued
    built = {"machine": machine(), "date": datetime.date.today().isoformat()}
    (Path(app.outdir).parent / BUILD_VALUES.name).write_text(dump({"built": built, "pages": pages}), encoding="utf-8")


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _name_record)
    app.connect("build-finished", _gather)
    return {"version": "1.0", "parallel_read_safe": False, "parallel_write_safe": True}
