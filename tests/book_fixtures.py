"""The book build shared by ``test_book.py`` (HTML checks) and ``test_browser.py`` (browser checks).

The book is built once per test session, with the README's command::

    jupyter-book build <repo> -W -n --keep-going

into ``<repo>/_build/html``, from scratch (the previous ``html``, ``.doctrees`` and
``jupyter_execute`` are removed first, so that warnings of unchanged pages are not hidden by an
incremental build). The full log is kept in ``_build/book-build.log``.

The fixtures here (:func:`built_book`, and for the browser checks :func:`chromium` and
:func:`server`) are registered once, by ``conftest.py``, for every test module: one build, one
browser and one server per session (two live Playwright sessions in one process fail). The build
itself is also memoised at module level (:func:`build_book`), and, under pytest-xdist, shared
between workers through a lock file and a stamp with the run's id.

Environment:

* ``REUSE_BOOK_BUILD=1``: skip the build and check the existing ``_build/html`` (for iterating on
  the checks; never set in CI).
* ``BOOK_BUILD_TIMEOUT``: seconds allowed for the build (default 3600).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The book's own build extensions (book/_ext, a folder of modules, not a package; Sphinx puts it on
# the path too): the tests read _toc.yml and check the Colab copies with their functions.
sys.path.insert(0, str(REPO / "book" / "_ext"))
import colab_copies
import colab_install  # noqa: F401  (for the tests: the install cell's rules)
import glued_values  # noqa: F401  (for the tests: the values files)

BUILD_DIR = REPO / "_build"
HTML_DIR = BUILD_DIR / "html"
LOG_PATH = BUILD_DIR / "book-build.log"
SCREENSHOT_DIR = BUILD_DIR / "screenshots"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic"]
LOCAL_HOST = "127.0.0.1"



def is_local(url: str) -> bool:
    """Whether the browser may load ``url``: this machine's server, or data the page made itself."""
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname == LOCAL_HOST


def local_only_context(browser, outside: list[str], **options):
    """A Playwright browser context that loads nothing from outside this machine: every other request
    is aborted and its URL appended to ``outside`` (the tests assert it stays empty)."""
    context = browser.new_context(service_workers="block", **options)

    def route(r):
        if is_local(r.request.url):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    return context


class LocalPage:
    """One page of the built book in Chromium (``page``), in a :func:`local_only_context`, with its
    console errors (``errors``) and the requests that left this machine (``outside``) recorded."""

    TIMEOUT_MS = 60_000

    def __init__(self, browser, url: str):
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.context = local_only_context(browser, self.outside, viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(self.TIMEOUT_MS)
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("request", lambda req: None if is_local(req.url) else self.outside.append(req.url))
        self.page.goto(url, wait_until="load")
        self.page.wait_for_load_state("networkidle")

    def close(self) -> None:
        self.context.close()


# Every page of the book, in the order of its "next" links; the chapters are its notebooks.
# Both come from _toc.yml, so a chapter added there is checked without editing the tests
# (test_book checks that every notebook in notebooks/ is listed, and built).
PAGES = colab_copies.toc_pages(REPO)
CHAPTERS = [page for page in PAGES if page.startswith("notebooks/")]

_REPOSITORY = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]
# Colab opens a chapter's plain-Markdown copy in colab/ (book/_ext/colab_copies.py), from the repository
# that _config.yml names (the chapters' install cells name the same one: tests/test_colab.py).
COLAB_PREFIX = (
    "https://colab.research.google.com/github/"
    f"{_REPOSITORY['url'].removeprefix('https://github.com/').rstrip('/')}/blob/{_REPOSITORY['branch']}/"
)


def colab_link(page: str) -> str:
    """The Colab launch link of a chapter page (``notebooks/<name>``): its copy in ``colab/``."""
    return f"{COLAB_PREFIX}colab/{page.removeprefix('notebooks/')}.ipynb"

_STAMP = BUILD_DIR / ".book-build.stamp"
_LOCK = BUILD_DIR / ".book-build.lock"


@dataclasses.dataclass(frozen=True)
class BookBuild:
    ok: bool
    returncode: int
    seconds: float
    command: str
    log: str
    html_dir: Path

    def failure_message(self, max_chars: int = 20000) -> str:
        log = self.log if len(self.log) <= max_chars else "[...]\n" + self.log[-max_chars:]
        return (
            f"book build failed (exit {self.returncode} after {self.seconds:.0f} s): {self.command}\n"
            f"full log: {LOG_PATH}\n{log}"
        )


def page_path(page: str) -> Path:
    return HTML_DIR / f"{page}.html"


def _command() -> list[str]:
    script = Path(sys.executable).with_name("jupyter-book")
    if script.exists():
        base = [str(script)]
    elif shutil.which("jupyter-book"):
        base = [shutil.which("jupyter-book")]
    else:
        base = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()"]
    return [*base, "build", str(REPO), "-W", "-n", "--keep-going"]


def _run_build() -> BookBuild:
    for stale in (HTML_DIR, BUILD_DIR / ".doctrees", BUILD_DIR / "jupyter_execute"):
        shutil.rmtree(stale, ignore_errors=True)
    env = dict(os.environ)
    # ipykernel makes inline figures the default only where MPLBACKEND is unset: with
    # MPLBACKEND=Agg (as CI exports) the chapters' plt.show() would draw nothing into the book.
    env.pop("MPLBACKEND", None)
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    cmd = _command()
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=float(os.environ.get("BOOK_BUILD_TIMEOUT", "3600")),
        )
        code, log = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        code, log = -1, (out.decode(errors="replace") if isinstance(out, bytes) else out) + "\n[timed out]"
    seconds = time.monotonic() - start
    ok = code == 0 and (HTML_DIR / "index.html").exists()
    BUILD_DIR.mkdir(exist_ok=True)
    LOG_PATH.write_text(f"$ {' '.join(cmd)}\n# exit {code} after {seconds:.1f} s\n{log}")
    return BookBuild(ok, code, seconds, " ".join(cmd), log, HTML_DIR)


def _from_disk(command: str) -> BookBuild:
    log = LOG_PATH.read_text() if LOG_PATH.exists() else ""
    code = 0
    for line in log.splitlines()[:2]:
        if line.startswith("# exit "):
            with contextlib.suppress(ValueError):
                code = int(line.split()[2])
    ok = code == 0 and (HTML_DIR / "index.html").exists()
    return BookBuild(ok, code, 0.0, command, log, HTML_DIR)


_RESULT: BookBuild | None = None


def build_book() -> BookBuild:
    """Build the book once per session (and once per xdist run); later calls return the result."""
    global _RESULT
    if _RESULT is not None:
        return _RESULT
    command = " ".join(_command())
    if os.environ.get("REUSE_BOOK_BUILD") == "1" and (HTML_DIR / "index.html").exists():
        _RESULT = _from_disk(command + "  [reused: REUSE_BOOK_BUILD=1]")
        return _RESULT
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run_id:
        _RESULT = _run_build()
        return _RESULT
    BUILD_DIR.mkdir(exist_ok=True)
    with open(_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other workers wait here while one builds
        if _STAMP.exists() and _STAMP.read_text() == run_id:
            _RESULT = _from_disk(command + "  [built by another xdist worker]")
        else:
            _RESULT = _run_build()
            _STAMP.write_text(run_id)
    return _RESULT


@pytest.fixture(scope="session")
def built_book() -> Path:
    """``_build/html`` of a successful build; fails (with the build log) when the build failed."""
    result = build_book()
    if not result.ok:
        pytest.fail(result.failure_message(), pytrace=False)
    return result.html_dir


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not importable ({exc}; pip install playwright)"
    return None


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium driven by Playwright, one for the session; skipped (or, with
    ``REQUIRE_BROWSER=1``, failed) where it is missing."""
    missing = _browser_missing()
    if missing:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but the browser is unavailable: {missing}", pytrace=False)
        pytest.skip(f"browser checks skipped: {missing} (set REQUIRE_BROWSER=1 to make this a failure)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture(scope="session")
def server(built_book):
    """``http://127.0.0.1:<port>/`` serving ``_build/html``, for the whole session."""
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer((LOCAL_HOST, 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOCAL_HOST}:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
