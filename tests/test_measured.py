"""results/ files the chapters quote (repmlp_lite.measured): what the H200 file holds and says of itself,
and where a chapter finds it outside a checkout (a package pip installed from the repository, as on Colab)."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from repmlp_lite import measured
from repmlp_lite.paper_speed import CLAIMS, GPU_MODES


def test_the_h200_figures_carry_their_provenance_and_fit_the_bench():
    h200 = measured.load_results("gpu_h200.json")
    provenance = h200["provenance"]
    assert provenance["gpu"] == "NVIDIA H200" and provenance["torch"] == "2.11.0+cu130"
    assert provenance["date"] == "2026-12-04" and provenance["package"] == "96e00c1"
    assert "one-off script" in provenance["measured_by"] and "96e00c1" in provenance["measured_by"]
    # TF32 (torch's default for convs) costs about a thousand times float32's rounding, on every net
    for net, row in h200["equivalence"]["rows"].items():
        assert row["float64"] < row["tf32_off"] < 1e-6 < 1e-4 < row["tf32_default"] < 1e-3, net
    speed = h200["speed"]
    assert speed["batch"] == 128 and set(speed["modes"]) <= set(GPU_MODES)  # the command's mode names
    assert [(r["net"], r["baseline"]) for r in speed["ratios"]] == [(n, b) for n, b, _ in CLAIMS]
    assert all(set(speed["modes"]) <= set(r) for r in speed["ratios"])


class _Installed:
    """An installed distribution whose ``direct_url.json`` says where pip took it from."""

    def __init__(self, direct_url: dict | None) -> None:
        self.direct_url = direct_url

    def read_text(self, name: str) -> str | None:
        assert name == "direct_url.json"
        return None if self.direct_url is None else json.dumps(self.direct_url)


def test_outside_a_checkout_the_file_comes_from_the_installed_commit(monkeypatch, tmp_path):
    monkeypatch.setattr(measured, "RESULTS", tmp_path)  # no results/ beside the package
    origin = {"url": "https://github.com/owner/book.git", "vcs_info": {"vcs": "git", "commit_id": "abc123"}}
    monkeypatch.setattr(measured.metadata, "distribution", lambda name: _Installed(origin))
    fetched = []

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        fetched.append(url)
        return io.BytesIO(b'{"provenance": {"gpu": "G"}}')

    monkeypatch.setattr(measured.urllib.request, "urlopen", urlopen)
    assert measured.load_results("x.json") == {"provenance": {"gpu": "G"}}
    assert fetched == ["https://raw.githubusercontent.com/owner/book/abc123/results/x.json"]


def test_outside_a_checkout_and_not_from_github_it_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(measured, "RESULTS", tmp_path)
    monkeypatch.setattr(measured.metadata, "distribution", lambda name: _Installed(None))  # a plain wheel
    with pytest.raises(FileNotFoundError, match=r"results/x\.json: not at .* clone of the book's repository"):
        measured.load_results("x.json")


def test_results_path_is_the_checkouts_file_or_the_installed_commits_url(monkeypatch, tmp_path):
    """The path ``pandas`` reads a committed measurement from (the training-step appendix's CSVs)."""
    assert Path(measured.results_path("gpu_h200.json")) == measured.RESULTS / "gpu_h200.json"
    assert measured.RESULTS == Path(__file__).resolve().parents[1] / "results"  # the checkout's
    monkeypatch.setattr(measured, "RESULTS", tmp_path)
    origin = {"url": "https://github.com/owner/book", "vcs_info": {"vcs": "git", "commit_id": "abc123"}}
    monkeypatch.setattr(measured.metadata, "distribution", lambda name: _Installed(origin))
    url = measured.results_path("train_step_h200_before/kernels.csv")
    assert url == "https://raw.githubusercontent.com/owner/book/abc123/results/train_step_h200_before/kernels.csv"


def test_checkout_commit_names_this_checkouts_commit_or_says_there_is_none(monkeypatch, tmp_path):
    """The provenance of a new measurement (results/gpu_check.py, results/train_step_gpu.py)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=measured.RESULTS.parent, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert measured.checkout_commit() == head
    monkeypatch.setattr(measured, "RESULTS", tmp_path / "results")  # a folder in no git checkout
    assert measured.checkout_commit() == "unknown (no git checkout)"
