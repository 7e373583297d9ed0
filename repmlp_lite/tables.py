"""The RepMLP paper's published figures (Tables 1, 2, 3, 4, 7) and the zoo's recount of them.

Each :class:`PaperRow` names the zoo model (and keyword arguments) that builds the row's network,
and the figures as printed: parameters and FLOPs in millions, **truncated** (3,890.7M prints as
3890), FLOPs being multiply-adds of the **deployed** net. :func:`recount` builds the net on the
meta device (no memory, no random init), deploys it and counts; :func:`truncated` prints a count the
paper's way, so a row matches when the strings are equal.

One row counts differently, as the authors' scripts do: Table 1's "A) before conversion" counts every
entry of the training form's state dict (BN running statistics included) and the training form's FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .measure import count_flops, count_parameters
from .reparameterize import deploy
from .zoo import create_model


@dataclass(frozen=True)
class PaperRow:
    """One published row: ``table``, ``row`` label, the zoo ``model`` + ``kwargs``, ``image_size``,
    the printed ``params`` and ``flops`` (millions, as strings; ``None`` where not published),
    ``top1`` and ``speed`` (examples/s on a GTX 1080Ti, batch 128) where published."""

    table: str
    row: str
    model: str
    image_size: int
    params: str
    flops: str | None = None
    top1: float | None = None
    speed: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    training_form: bool = False  # count the state dict and FLOPs before conversion (Table 1, row A)


def _c4(r: int, g: int) -> dict[str, Any]:
    return {"repmlp_stages": ("c4",), "r": r, "groups": g}


def _stages(*names: str) -> dict[str, Any]:
    return {"repmlp_stages": names, "r": {"c2": 2, "c3": 2, "c4": 4, "c5": 4}, "groups": 8}


_MLP = "repmlp_pure_mlp_cifar"
ROWS: tuple[PaperRow, ...] = (
    PaperRow("1", "Pure MLP", _MLP, 32, "22.41", "52.8", 91.11),
    PaperRow("1", "A) before conversion", _MLP, 32, "22.91", "118.9", 91.11, training_form=True),
    PaperRow("1", "B) w/o Local", _MLP, 32, "22.41", "52.8", 82.64, kwargs={"reparam_conv_k": ()}),
    PaperRow("1", "C) w/o Global", _MLP, 32, "22.08", "52.5", 89.61, kwargs={"global_perceptron": False}),
    PaperRow("1", "D) FC3 as conv9", _MLP, 32, "0.81", "66.2", 87.64, kwargs={"mixer": "fc3_conv9"}),
    PaperRow("1", "E) RepMLP as conv9", _MLP, 32, "0.48", "65.8", 87.29, kwargs={"mixer": "conv9"}),
    PaperRow("1", "Wide ConvNet", "wide_convnet_cifar", 32, "0.50", "65.1", 91.99),
    PaperRow("2", "r=4, g=8", "repmlp_resnet", 224, "30.87", None, 78.13, 671, _c4(4, 8)),
    PaperRow("2", "r=4, g=2", "repmlp_resnet", 224, "49.31", None, 78.22, 666, _c4(4, 2)),
    PaperRow("2", "r=8, g=8", "repmlp_resnet", 224, "25.02", None, 77.79, 759, _c4(8, 8)),
    PaperRow("2", "r=2, g=8", "repmlp_resnet", 224, "52.77", None, 78.60, 639, _c4(2, 8)),
    PaperRow("2", "ResNet-50", "resnet50_224", 224, "25.53", None, 77.19, 689),
    PaperRow("3", "c2+c3+c4+c5", "repmlp_resnet", 224, "74.46", None, 78.32, 574, _stages("c2", "c3", "c4", "c5")),
    PaperRow("3", "c2+c3+c4", "repmlp_resnet", 224, "66.97", None, 78.60, 575, _stages("c2", "c3", "c4")),
    PaperRow("3", "c3+c4+c5", "repmlp_resnet", 224, "48.35", None, 78.30, 632, _stages("c3", "c4", "c5")),
    PaperRow("3", "c3+c4", "repmlp_resnet", 224, "40.87", None, 78.55, 636, _stages("c3", "c4")),
    PaperRow("3", "c3", "repmlp_resnet", 224, "35.52", None, 78.09, 644, _stages("c3")),
    PaperRow("3", "c4", "repmlp_resnet", 224, "30.87", None, 78.13, 671, _stages("c4")),
    PaperRow("4", "ResNet-50", "resnet50_224", 224, "25.53", "4089", 77.19, 689),
    PaperRow("4", "ResNet-101", "resnet101_224", 224, "44.49", "7801", 78.55, 421),
    PaperRow("4", "RepMLP-Res50", "repmlp_res50_224", 224, "40.87", "3890", 78.55, 636),
    PaperRow("4", "ResNet-50 @320", "resnet50_320", 320, "25.53", "8343", 78.03, 344),
    PaperRow("4", "ResNet-101 @320", "resnet101_320", 320, "44.49", "15919", 79.40, 213),
    PaperRow("4", "RepMLP-Res50-g8/16", "repmlp_res50_g8_16_320", 320, "59.22", "8057", 79.76, 312),
    PaperRow("4", "RepMLP-Res50-g8/8", "repmlp_res50_g8_8_320", 320, "72.02", "8108", 79.84, 311),
    PaperRow("4", "RepMLP-Res50-g4/8", "repmlp_res50_g4_8_320", 320, "87.38", "8354", 80.07, 305),
    PaperRow("7", "original", "resnet50_224", 224, "25.53", "4089", 77.19, 689),
    PaperRow("7", "RepMLP bottleneck", "repmlp_res50_224", 224, "40.87", "3890", 78.55, 636),
    PaperRow("7", "RepMLP Light", "repmlp_res50_light_224", 224, "57.86", "2919", 77.14, 1074),
)

# examples/s on one GTX 1080Ti, batch 128 (paper, Tables 2, 4 and 7), by zoo name
PAPER_THROUGHPUT: dict[str, int] = {row.model: row.speed for row in ROWS if row.speed is not None and not row.kwargs}

# The authors' README (DingXiaoH/RepMLP): parameters (M) and FLOPs (G) as printed; it does not say how it
# counted (chapter 7 counts training-form parameters and deployed multiply-adds).
REPMLPNET_README = {
    "repmlpnet_t224": (38.3, 2.8), "repmlpnet_b224": (68.2, 6.7), "repmlpnet_t256": (58.7, 4.2),
    "repmlpnet_b256": (96.5, 9.6), "repmlpnet_d256": (86.9, 8.6), "repmlpnet_l256": (117.7, 11.5),
}


def truncated(value: float, like: str) -> str:
    """``value`` printed with as many decimals as ``like`` has, truncated (not rounded) as the paper does."""
    decimals = len(like.split(".")[1]) if "." in like else 0
    scale = 10**decimals
    return f"{math.floor(value * scale + 1e-9) / scale:.{decimals}f}"


@torch.no_grad()
def recount(row: PaperRow) -> tuple[float, float]:
    """``(params, FLOPs)`` of ``row``'s network in millions (FLOPs = multiply-adds, batch 1).

    Built on the meta device and deployed (or, for ``training_form``, counted before conversion:
    state-dict entries and the training form's FLOPs).
    """
    with torch.device("meta"):
        model = create_model(row.model, **row.kwargs).eval()
        x = torch.empty(1, 3, row.image_size, row.image_size)
    if row.training_form:
        params = sum(t.numel() for t in model.state_dict().values())
    else:
        model = deploy(model)
        params = count_parameters(model)
    return params / 1e6, count_flops(model, x) / 2 / 1e6
