"""Where a training step spends its time: ``python -m repmlp_lite.bench --train-step``.

One optimiser step (forward, backward, step; the batch already on the device; CUDA synchronised by
``torch.utils.benchmark``) of a zoo model, timed in interleaved rounds against the same step of the
reference formulation, and the top operators (CPU) or kernels (GPU) by self time by
``torch.profiler``.

The reference formulation is the training form as the paper writes it: every layer of
:mod:`repmlp_lite.fast_training` runs the ``forward`` of its ``torch.nn`` base
(:func:`reference_form` patches them, on a copy; nothing in the models switches). The two forms
compute the same numbers; the tests check it in float64.
"""

from __future__ import annotations

import argparse
import copy
import re
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .fast_training import (
    COMPILE_MODES,
    PartitionBatchNorm1d,
    PartitionBatchNorm2d,
    PartitionConv2d,
    for_speed,
)
from .measure import interleaved_ms, median_ms, median_ratio, quiet_stderr
from .recipe import make_optimizer
from .runtime import autocast
from .zoo import create_model, list_models

__all__ = [
    "CATEGORIES",
    "COLUMNS",
    "GPU_TARGETS",
    "OTHER",
    "PRECISIONS",
    "add_options",
    "block_layer_shapes",
    "compare_layer",
    "compare_steps",
    "image_size",
    "op_category",
    "reference_form",
    "run",
    "short_name",
    "step_profile",
    "time_by_category",
    "train_step",
]

PRECISIONS = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}
"""``--precision``: its autocast setting of the training command (``--amp``)."""

GPU_TARGETS = {"repmlpnet_t224": 1800.0, "repmlp_pure_mlp_cifar": 10000.0}
"""Issue 24's goals for the fast form on one H200, images/s at batch 128 with bf16 autocast: T224 four
times the authors' code (411 images/s there), the pure MLP past its launch-bound 3,934
(``results/train_step_h200_before/``). ``results/train_step_gpu.py`` measures them."""

# the torch.nn layer whose forward is the reference formulation of each fast layer
_REFERENCE_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    PartitionBatchNorm1d: nn.BatchNorm1d,
    PartitionBatchNorm2d: nn.BatchNorm2d,
    PartitionConv2d: nn.Conv2d,
}

COLUMNS = {  # printed per table by ``python -m repmlp_lite.bench --train-step``
    "train_step": ["model", "batch", "precision", "compile", "reference_img_s", "fast_img_s", "fast/reference",
                   "reference_ms", "fast_ms"],
    "step_profile": ["form", "rank", "op", "calls", "self_ms", "share"],
}


def reference_form(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose :mod:`repmlp_lite.fast_training` layers run their ``torch.nn``
    base's ``forward``: the training form as written before the speed work, same parameters."""
    copied = copy.deepcopy(model)
    for module in copied.modules():
        base = _REFERENCE_LAYERS.get(type(module))
        if base is not None:
            module.forward = types.MethodType(base.forward, module)
    return copied


def image_size(name: str) -> int:
    """The side of the images a zoo name is built for: its trailing number (``repmlpnet_t224``: 224), else 32."""
    size = re.search(r"(\d+)$", name)
    return int(size.group(1)) if size else 32


def train_step(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, precision: str = "fp32"
) -> Callable[[], None]:
    """One optimiser step of ``model`` (in place) on ``images`` ``(B, 3, S, S)`` and ``labels`` ``(B,)``,
    as the training command takes it: autocast to ``precision`` (fp16 with its gradient scaler),
    cross-entropy, SGD with momentum (:func:`repmlp_lite.recipe.make_optimizer`). Returns the step, a
    function of no arguments; it runs with gradients on even where the caller turned them off."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and images.device.type != "cuda":
        raise ValueError("precision 'fp16' needs a GPU (its gradient scaler is CUDA's); on a CPU use 'bf16'")
    optimizer = make_optimizer(model, "sgd", 1e-3, 5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    model.train()

    def step() -> None:
        with torch.enable_grad():
            with autocast(PRECISIONS[precision], images.device):
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return step


def _forms(
    name: str, batch: int, device: str, compile_mode: str | None, channels_last: bool, seed: int,
    model_kwargs: dict[str, Any],
) -> tuple[dict[str, nn.Module], torch.Tensor, torch.Tensor]:
    """Both forms of zoo model ``name`` built with ``model_kwargs`` (the same weights) on ``device``, the fast
    one compiled and in the channels-last format as asked (:func:`~repmlp_lite.fast_training.for_speed`; the
    reference formulation runs as the training command ran it before those options), and a batch of random
    images (channels as its first conv takes them; side ``model_kwargs["image_size"]`` if given, else
    :func:`image_size`) and labels (one per output)."""
    torch.manual_seed(seed)
    model = create_model(name, **model_kwargs)
    in_channels = next(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    num_classes = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)][-1]
    models = {"reference": reference_form(model).to(device),
              "fast": for_speed(model.to(device), compile_mode, channels_last)}
    gen = torch.Generator().manual_seed(seed)
    size = model_kwargs.get("image_size", image_size(name))
    images = torch.randn(batch, in_channels, size, size, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    return models, images, labels


def compare_steps(
    name: str,
    batch: int,
    device: str = "cpu",
    precision: str = "fp32",
    rounds: int = 3,
    min_run_time: float = 0.1,
    compile_mode: str | None = None,
    channels_last: bool = False,
    top: int = 0,
    seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A training step (:func:`train_step`) of zoo model ``name`` (built with ``model_kwargs``), reference
    formulation against fast form (compiled with ``compile_mode`` and channels-last if asked: the reference
    stays as it was).

    Returns a row: images/s of both forms, timed in ``rounds`` interleaved rounds after warm-up steps
    (three more for a compiled form, whose CUDA graphs are recorded in its first calls), and
    ``fast/reference``, the speed-up (the median of the per-round ratios of the reference's time to the
    fast form's); and, if ``top > 0``, both forms' :func:`step_profile` (rows with a ``form`` column).
    """
    models, images, labels = _forms(name, batch, device, compile_mode, channels_last, seed, model_kwargs or {})
    steps = {form: train_step(m, images, labels, precision) for form, m in models.items()}
    for _ in range(3 if compile_mode else 0):
        steps["fast"]()
    times = interleaved_ms({form: (lambda _, s=s: s()) for form, s in steps.items()}, images, rounds, min_run_time)
    ms = median_ms(times)
    row = {
        "table": "train_step", "model": name, "batch": batch, "device": device, "precision": precision,
        "compile": compile_mode or "", "channels_last": channels_last,
        "reference_img_s": batch / ms["reference"] * 1e3, "fast_img_s": batch / ms["fast"] * 1e3,
        "fast/reference": median_ratio(times, "reference", "fast"),
        "reference_ms": ms["reference"], "fast_ms": ms["fast"],
    }
    profile = [
        {"table": "step_profile", "model": name, "precision": precision, "form": form, **entry}
        for form, step in (steps.items() if top > 0 else ())
        for entry in step_profile(step, device, top)
    ]
    return row, profile


def short_name(name: str) -> str:
    """An operator's or kernel's name without namespaces, template arguments and parameters:
    ``void at::native::batch_norm_collect_statistics_kernel<...>(...)`` -> ``batch_norm_collect_statistics_kernel``."""
    short = name.removeprefix("void ")
    for group in (r"<[^<>]*>", r"\([^()]*\)"):  # innermost first, until none is left
        while re.search(group, short):
            short = re.sub(group, "", short)
    return short.rsplit("::", 1)[-1].strip() or name


def step_profile(step: Callable[[], None], device: str, top: int = 10, steps: int = 2) -> list[dict[str, Any]]:
    """The ``top`` operators (CPU: by self CPU time) or kernels (GPU: by self GPU time) of ``steps`` calls of
    ``step`` (after one warm-up call), by ``torch.profiler``: ``op`` (:func:`short_name`), ``calls``
    and ``self_ms`` per step, ``share`` of the total self time."""
    step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with quiet_stderr(), torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()

    def self_us(event: Any) -> float:
        return event.self_device_time_total if device == "cuda" else event.self_cpu_time_total

    events = [e for e in prof.key_averages() if self_us(e) > 0]
    total = sum(self_us(e) for e in events)
    ranked = sorted(events, key=self_us, reverse=True)[:top]
    return [
        {"rank": i + 1, "op": short_name(e.key), "calls": e.count // steps, "self_ms": self_us(e) / 1e3 / steps,
         "share": self_us(e) / total}
        for i, e in enumerate(ranked)
    ]


CATEGORIES = {  # a profile's operators and kernels by what they do: the first pattern that matches
    "BatchNorm (PyTorch's kernels)": r"batch_norm",
    "convolutions": r"conv|cudnn|implicit_gemm|wgrad|dgrad|depthwise",
    "matrix products": r"\bmm\b|^mm$|bmm|addmm|gemm|matmul|linear|cutlass|sm\d+_xmma",
}
OTHER = "everything else"


def op_category(op: str) -> str:
    """The :data:`CATEGORIES` key of operator or kernel ``op`` (a :func:`short_name`), else :data:`OTHER`."""
    return next((category for category, pattern in CATEGORIES.items() if re.search(pattern, op)), OTHER)


def time_by_category(profile: Sequence[dict[str, Any]], step_ms: float) -> dict[str, float]:
    """Milliseconds of a step of ``step_ms`` per :func:`op_category`, from a :func:`step_profile`'s shares;
    what the rows leave out (a profile's tail) counts as :data:`OTHER`."""
    ms = dict.fromkeys([*CATEGORIES, OTHER], 0.0)
    for row in profile:
        ms[op_category(row["op"])] += row["share"] * step_ms
    ms[OTHER] += max(0.0, 1 - sum(row["share"] for row in profile)) * step_ms
    return ms


def block_layer_shapes(name: str, batch: int) -> list[dict[str, Any]]:
    """What every :mod:`repmlp_lite.fast_training` layer of zoo model ``name`` receives in a training step at
    ``batch`` images (a forward on the meta device: shapes only): ``layer`` (its name in the model), ``kind``
    (its class), ``input`` shape, ``channels`` and ``values_per_channel`` (batch times positions)."""
    rows = []

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        rows.append({"layer": names[module], "kind": type(module).__name__, "input": tuple(x.shape),
                     "channels": x.shape[1], "values_per_channel": x.numel() // x.shape[1]})

    with torch.device("meta"):
        model = create_model(name).train()
        names = {m: n for n, m in model.named_modules() if type(m) in _REFERENCE_LAYERS}
        for module in names:
            module.register_forward_pre_hook(record)
        model(torch.empty(batch, 3, image_size(name), image_size(name)))
    return rows


def compare_layer(layer: nn.Module, x: torch.Tensor, rounds: int = 3, min_run_time: float = 0.1) -> dict[str, Any]:
    """Forward and backward of a :mod:`repmlp_lite.fast_training` ``layer`` (training mode) on ``x`` against
    its reference formulation (:func:`reference_form`), interleaved: ``reference_ms``, ``fast_ms`` and
    ``fast/reference``, the speed-up (median of per-round ratios)."""
    forms = {"reference": reference_form(layer).train(), "fast": layer.train()}
    x = x.detach().requires_grad_()

    def run(form: nn.Module) -> None:
        with torch.enable_grad():
            form(x).sum().backward()

    times = interleaved_ms({name: (lambda _, f=f: run(f)) for name, f in forms.items()}, x, rounds, min_run_time)
    ms = median_ms(times)
    return {"reference_ms": ms["reference"], "fast_ms": ms["fast"],
            "fast/reference": median_ratio(times, "reference", "fast")}


def add_options(parser: argparse.ArgumentParser) -> None:
    """The ``--train-step`` options of ``python -m repmlp_lite.bench`` (with its ``--device``, ``--rounds``,
    ``--min-run-time``, ``--csv``)."""
    group = parser.add_argument_group("training step (--train-step)")
    group.add_argument("--train-step", action="store_true",
                       help="time one optimiser step of zoo models, fast form against the reference formulation")
    group.add_argument("--models", nargs="+", default=["repmlpnet_t224", "repmlp_pure_mlp_cifar"], metavar="NAME",
                       help="zoo names (default: repmlpnet_t224 repmlp_pure_mlp_cifar)")
    group.add_argument("--batch", type=int, help="images per step (default: 128 on a GPU, 8 on a CPU)")
    group.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32", help="autocast (default fp32)")
    group.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES, metavar="MODE",
                       help=f"torch.compile the fast form with this mode ({', '.join(COMPILE_MODES)}; default: default)")
    group.add_argument("--channels-last", action="store_true", help="the fast form in the channels-last memory format")
    group.add_argument("--top", type=int, default=10, help="operators or kernels per profile (0: no profile)")


def run(args: argparse.Namespace, error: Callable[[str], None]) -> dict[str, list[dict[str, Any]]]:
    """``--train-step``: :func:`compare_steps` for each of ``args.models``; bad input goes to ``error``
    (``parser.error``). Returns the tables: ``{"train_step": one row per model, "step_profile <model>": its
    profile rows}`` (no profiles with ``--top 0``)."""
    batch = args.batch if args.batch is not None else (128 if args.device == "cuda" else 8)
    unknown = [name for name in args.models if name not in list_models()]
    if unknown:
        error(f"--models: unknown name {unknown[0]!r}; one of {', '.join(list_models())}")
    if batch < 1:
        error(f"--batch must be a positive integer, got {batch}")
    if args.precision == "fp16" and args.device != "cuda":
        error("--precision fp16 needs a GPU (its gradient scaler is CUDA's); on a CPU use --precision bf16")
    tables: dict[str, list[dict[str, Any]]] = {"train_step": []}
    for name in args.models:
        row, profile = compare_steps(
            name, batch, args.device, args.precision, args.rounds, args.min_run_time, args.compile,
            args.channels_last, args.top,
        )
        tables["train_step"].append(row)
        if profile:
            tables[f"step_profile {name}"] = profile
    return tables
