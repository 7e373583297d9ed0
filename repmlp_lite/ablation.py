"""Does Locality Injection pay? RepMLPNet trained with and without its conv branches, over seeds.

Both variants have the same inference-time structure (after merging, one FC3 per set); only
training differs. The data are the digits at random places on a larger canvas
(:func:`repmlp_lite.data.load_digits_on_canvas`), where locality should matter. The quick
setting (the book, CI) trains briefly on part of the images; ``REPMLP_FULL=1`` (or ``full=True``)
trains longer on all of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.figure import Figure

from .data import load_digits_on_canvas
from .reparameterize import deploy
from .repmlpnet import small_repmlpnet
from .style import COLUMN_WIDTH_IN
from .train import accuracy, predict, train

VARIANTS = {"with conv branches (K = 1, 3)": (1, 3), "without (FC3 alone)": ()}


@dataclass(frozen=True)
class AblationSettings:
    """One run of the ablation: seeds, epochs, training images (``None``: all) and the canvas."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = 10
    train_size: int | None = 600
    canvas_size: int = 32
    digit_size: int = 12
    batch_size: int = 32
    lr: float = 0.1


def ablation_settings(full: bool | None = None) -> AblationSettings:
    """Quick settings, or the full run (10 seeds, 30 epochs, all training images) when ``full``
    is true or, with ``full=None``, when the environment variable ``REPMLP_FULL`` is ``1``."""
    if full is None:
        full = os.environ.get("REPMLP_FULL", "0") == "1"
    if full:
        return AblationSettings(seeds=tuple(range(10)), epochs=30, train_size=None)
    return AblationSettings()


def locality_ablation(settings: AblationSettings, device: torch.device | None = None) -> pd.DataFrame:
    """Train :func:`~repmlp_lite.repmlpnet.small_repmlpnet` with and without conv branches, seed by seed.

    Returns one row per run: ``variant``, ``seed``, ``test_accuracy`` (of the merged net) and
    ``same_predictions`` (merged and training form agree on every test image).
    """
    device = device or torch.device("cpu")
    data = load_digits_on_canvas(settings.canvas_size, settings.digit_size, settings.train_size)
    rows = []
    for variant, kernels in VARIANTS.items():
        for seed in settings.seeds:
            torch.manual_seed(seed)
            net = small_repmlpnet(image_size=settings.canvas_size, reparam_conv_k=kernels)
            train(net, data.train, data.test, settings.epochs, device, settings.batch_size, settings.lr, seed,
                  progress=False)
            logits = predict(net, data.test, device)
            merged_logits = predict(deploy(net), data.test, device)
            rows.append({
                "variant": variant,
                "seed": seed,
                "test_accuracy": accuracy(merged_logits, data.test),
                "same_predictions": bool((logits.argmax(1) == merged_logits.argmax(1)).all()),
            })
    return pd.DataFrame(rows)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (n-1), min and max of the test accuracy per variant, and the run count."""
    grouped = results.groupby("variant", sort=False)["test_accuracy"]
    return grouped.agg(["mean", "std", "min", "max", "count"])


def seeds_won(results: pd.DataFrame) -> int:
    """In how many seeds the first variant (with conv branches) beat the second, seed for seed."""
    first, second = (results[results["variant"] == v].set_index("seed")["test_accuracy"] for v in VARIANTS)
    return int((first > second.reindex(first.index)).sum())


def plot_ablation(results: pd.DataFrame, width: float = COLUMN_WIDTH_IN) -> Figure:
    """Each seed's accuracy as a dot, and mean ± std as a bar with error line, one column per variant."""
    fig, ax = plt.subplots(figsize=(width, 0.45 * width))
    variants: Sequence[str] = list(dict.fromkeys(results["variant"]))
    for i, variant in enumerate(variants):
        acc = results.loc[results["variant"] == variant, "test_accuracy"]
        ax.bar(i, acc.mean(), width=0.5, color="#c6dcf5" if i == 0 else "#e6e6e6", edgecolor="#555555")
        ax.errorbar(i, acc.mean(), yerr=acc.std(), color="black", capsize=6)
        offsets = torch.linspace(-0.12, 0.12, len(acc)).tolist()
        ax.plot([i + o for o in offsets], acc, "o", color="#1f4e79", markersize=4)
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylabel("test accuracy (merged net)")
    ax.set_ylim(0, 1)
    ax.set_title("Digits at random places on a canvas: mean ± std over seeds")
    fig.tight_layout()
    return fig

