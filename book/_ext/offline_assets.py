"""Sphinx extension for this book: pages that load scripts once, and only from the book itself.

Jupyter Book 1.x always loads ``sphinx_thebe``. Its config script was included twice on every
page (console: "Identifier 'THEBE_JS_URL' has already been declared"), and it points at a CDN.
This book does not use thebe (``launch_buttons.thebe: false``; Colab is the way to run a
chapter), so its scripts, stylesheet and per-page config are dropped here, and any remaining
duplicate script (same file, or same inline body) is kept once.

On pages with saved widget state (myst-nb adds the local ``require.js`` and ``embed-amd.js``
there), a ``require.config`` is inserted between the two: ``embed-amd.js`` takes its webpack
public path (where its Font Awesome files lie) from the AMD module's URL, which RequireJS
would otherwise resolve to ``<page dir>/@jupyter-widgets/html-manager/dist/`` (404s); the
``paths`` entry points it at ``_static/jupyter-widgets/``, next to the vendored bundle.

The same pages get a small shim for ``MathJax.Hub.Queue``: ipywidgets 8 typesets widget labels
through that MathJax 2 call whenever ``window.MathJax`` exists, and the book's MathJax 3 has no
``Hub`` (uncaught "Cannot read properties of undefined (reading 'Queue')"). The shim hands the
labels to MathJax 3's ``typesetPromise`` instead.

The build also sets ``REPMLP_STATIC_PAGE=1`` for the kernels it starts (see :func:`setup`).

Any script or stylesheet that would still come from another host is reported as a Sphinx
warning, which ``jupyter-book build -W`` turns into a failed build.
"""

from __future__ import annotations

import json
import os
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.builders.html._assets import _JavaScript
from sphinx.util import logging

from repmlp_lite.book import STATIC_PAGE_ENV

logger = logging.getLogger(__name__)

_THEBE_FILES = ("sphinx-thebe.js", "sphinx-thebe.css")
_THEBE_MARKERS = ("THEBE_JS_URL", "text/x-thebe-config", "kernelName =")
_REQUIRE_JS = "requirejs/require.js"  # as named in _config.yml's nb_ipywidgets_js
_WIDGETS_DIR = "_static/jupyter-widgets"


def _filename(asset: Any) -> str:
    return str(getattr(asset, "filename", asset) or "")


def _body(asset: Any) -> str:
    return str((getattr(asset, "attributes", None) or {}).get("body") or "")


def _is_thebe(asset: Any) -> bool:
    name = _filename(asset)
    return name.endswith(_THEBE_FILES) or any(m in _body(asset) for m in _THEBE_MARKERS)


def _is_external(name: str) -> bool:
    return "://" in name or name.startswith("//")


def _clean(assets: list[Any], pagename: str, kind: str) -> list[Any]:
    kept: list[Any] = []
    seen: set[tuple[str, str]] = set()
    for asset in assets:
        if _is_thebe(asset):
            continue
        body = _body(asset)
        # Inline scripts are registered with filename None or "" (then "_static/"): key on the body.
        key = ("body", body) if body else ("file", _filename(asset))
        if key in seen:
            continue
        seen.add(key)
        kept.append(asset)
        if _is_external(_filename(asset)):
            logger.warning(
                "page %r loads a %s from outside the book: %s (vendor a local copy in book/_vendor/)",
                pagename, kind, _filename(asset), type="offline_assets", subtype=kind,
            )
    return kept


# MathJax 2's Hub.Queue(["Typeset", Hub, element]) for ipywidgets' labels, on top of MathJax 3.
# MathJax 3 replaces the window.MathJax config object with its own when it loads, so the Hub is
# attached through an accessor to whatever object window.MathJax holds.
_MATHJAX2_HUB_SHIM = """(function () {
  var current = window.MathJax, pending = [];
  function flush() {
    var mj = current;
    if (!pending.length || !(mj && mj.startup && mj.startup.promise)) return;
    var elements = pending.splice(0);
    mj.startup.promise.then(function () { return mj.typesetPromise(elements); })
      .catch(function (err) { console.warn("MathJax: widget label not typeset", err); });
  }
  var hub = {Queue: function () {
    for (var i = 0; i < arguments.length; i++) {
      var job = arguments[i];
      if (Array.isArray(job) && job[0] === "Typeset" && job[2]) pending.push(job[2]);
    }
    flush();
  }};
  function attach(mj) { if (mj && typeof mj === "object" && !mj.Hub) mj.Hub = hub; }
  attach(current);
  Object.defineProperty(window, "MathJax", {
    configurable: true, enumerable: true,
    get: function () { return current; },
    set: function (value) { current = value; attach(value); setTimeout(flush, 0); }
  });
})();"""


def _with_widget_paths(scripts: list[Any], context: dict) -> list[Any]:
    """After the local require.js, if present: ``require.config({paths: ...})`` and the Hub shim."""
    out: list[Any] = []
    for asset in scripts:
        out.append(asset)
        if _filename(asset).endswith(_REQUIRE_JS):
            # Relative to the page, as RequireJS's default baseUrl is the page's folder.
            root = context["pathto"](_WIDGETS_DIR, 1)
            body = "require.config({paths: {'@jupyter-widgets/html-manager/dist': %s}});" % json.dumps(root)
            out.append(_JavaScript(None, priority=asset.priority, body=body))
            out.append(_JavaScript(None, priority=asset.priority, body=_MATHJAX2_HUB_SHIM))
    return out


def _page_context(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    # New lists: the builder's own lists are restored from backups page by page.
    if "script_files" in context:
        scripts = _clean(list(context["script_files"]), pagename, "script")
        context["script_files"] = _with_widget_paths(scripts, context)
    if "css_files" in context:
        context["css_files"] = _clean(list(context["css_files"]), pagename, "stylesheet")


def _drop_thebe_nodes(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    for node in list(doctree.findall(nodes.raw)):
        if node.get("format") == "html" and any(m in node.astext() for m in _THEBE_MARKERS):
            node.parent.remove(node)


def setup(app: Sphinx) -> dict[str, Any]:
    # Every kernel the build starts inherits this: a cell can tell that its output goes into a static
    # page (repmlp_lite.book.static_page), where a control that needs Python could not move.
    os.environ[STATIC_PAGE_ENV] = "1"
    # After myst-nb (which adds the widget scripts per page) and sphinx-thebe.
    app.connect("html-page-context", _page_context, priority=900)
    app.connect("doctree-resolved", _drop_thebe_nodes, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
