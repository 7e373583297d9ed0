"""Figures measured on machines the book is not built on, committed in the repository's ``results/``
(e.g. ``results/gpu_h200.json``: the package on an NVIDIA H200), for the chapters to quote.

:func:`checkout_commit` names the commit a new measurement is taken at, for its provenance.
:func:`load_results` reads such a JSON file, and :func:`results_path` says where any of them is (for
``pandas``), from the checkout this package runs from. A package installed
by pip from the book's repository (Colab's install cell) has no ``results/`` beside it: then the file is
read from that repository, at the commit pip installed, named by the installation's ``direct_url.json``
(PEP 610).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"


def checkout_commit() -> str:
    """The short commit of the git checkout this package runs from (where ``results/`` is), for the
    provenance of a measurement; ``"unknown (no git checkout)"`` outside one."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent, capture_output=True, text=True)
    except OSError:  # no git
        return "unknown (no git checkout)"
    return done.stdout.strip() or "unknown (no git checkout)"


def _repository_url(name: str) -> str:
    """``results/<name>`` on GitHub at the commit pip installed this package from."""
    try:
        origin = json.loads(metadata.distribution("repmlp_lite").read_text("direct_url.json") or "null")
    except metadata.PackageNotFoundError:
        origin = None
    url, commit = (origin or {}).get("url", ""), (origin or {}).get("vcs_info", {}).get("commit_id")
    if not (url.startswith("https://github.com/") and commit):
        raise FileNotFoundError(
            f"results/{name}: not at {RESULTS / name}, and this repmlp_lite was not installed from a GitHub "
            "repository; run the chapter from a clone of the book's repository"
        )
    repository = url.removeprefix("https://github.com/").removesuffix(".git")
    return f"https://raw.githubusercontent.com/{repository}/{commit}/results/{name}"


def results_path(name: str) -> str:
    """Where ``results/<name>`` is read from: the checkout's file where there is one, else its URL in the
    book's repository at the commit pip installed (see the module's docstring); ``pandas`` reads either."""
    local = RESULTS / name
    return str(local) if local.exists() else _repository_url(name)


def load_results(name: str) -> dict[str, Any]:
    """The JSON file ``results/<name>`` of the book's repository (see the module's docstring)."""
    path = results_path(name)
    if not path.startswith("https://"):
        return json.loads(Path(path).read_text())
    with urllib.request.urlopen(path, timeout=30) as response:
        return json.loads(response.read())
