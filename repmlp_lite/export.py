"""The merged model in another engine: ONNX export and onnxruntime.

After :func:`~repmlp_lite.reparameterize.deploy`, a RepMLP block is FC layers and reshapes only, so its
ONNX graph holds MatMul/Gemm nodes and no Conv. This module exports a model, runs it in
onnxruntime, compares the outputs and counts the Conv nodes inside and outside the RepMLP blocks;
:func:`engine_table` times the merged net in both engines (``python -m repmlp_lite.bench``).

Nodes are attributed to modules by the metadata the ``torch.export``-based ("dynamo") exporter
writes on each node: ``pkg.torch.onnx.class_hierarchy``, the classes of the modules the node was
traced in. Where that exporter fails, the TorchScript exporter (``dynamo=False``) is used, whose
nodes carry no such metadata; :func:`conv_nodes` then counts the Conv nodes of the whole graph only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from .block import RepMLPBlock
from .measure import count_flops, count_parameters, interleaved_ms, median_ms, median_ratio, randomize_bn
from .nets import small_conv_resnet, small_repmlp_resnet
from .reparameterize import deploy

_BLOCK_CLASS = f"{RepMLPBlock.__module__}.{RepMLPBlock.__qualname__}"  # "repmlp_lite.block.RepMLPBlock"


def export_onnx(
    model: nn.Module,
    x: torch.Tensor | None = None,
    f: str | os.PathLike | io.BytesIO | None = None,
    dynamo: bool | None = None,
) -> bytes:
    """Export ``model`` (eval mode, float32, on the CPU) to ONNX with a dynamic batch size.

    Args:
        model: typically a merged model (:func:`~repmlp_lite.reparameterize.deploy`).
        x: an example input; ``None`` means one 3x32x32 image.
        f: also write the model there (a path or a ``BytesIO``); ``None``: only return it.
        dynamo: ``True`` for the ``torch.export``-based exporter, ``False`` for the TorchScript one,
            ``None`` to try the first and fall back to the second.

    Returns:
        The serialized ONNX model.
    """
    model = model.eval()
    x = torch.randn(1, 3, 32, 32) if x is None else x
    attempts = [True, False] if dynamo is None else [dynamo]
    for i, use_dynamo in enumerate(attempts):
        buffer = io.BytesIO()
        try:
            _export(model, x, buffer, use_dynamo)
            break
        except Exception:  # the other exporter is the fallback; the last failure is raised
            if i == len(attempts) - 1:
                raise
    data = buffer.getvalue()
    if isinstance(f, io.BytesIO):
        f.write(data)
    elif f is not None:
        with open(f, "wb") as out:
            out.write(data)
    return data


def _export(model: nn.Module, x: torch.Tensor, buffer: io.BytesIO, dynamo: bool) -> None:
    """One ``torch.onnx.export`` call, without its progress messages and warnings."""
    kwargs: dict = dict(input_names=["x"], output_names=["y"], dynamo=dynamo, verbose=False)
    if dynamo:
        kwargs.update(dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
    else:
        kwargs.update(dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                torch.onnx.export(model, (x,), buffer, **kwargs)
    finally:
        logger.setLevel(level)


def onnxruntime_fn(onnx_model: bytes | str | os.PathLike) -> Callable[[torch.Tensor], np.ndarray]:
    """An onnxruntime session (CPUExecutionProvider) as a function of a torch tensor."""
    source = str(onnx_model) if isinstance(onnx_model, (str, os.PathLike)) else onnx_model
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {name: x.detach().cpu().numpy()})[0]

    return run


class ConvCount(NamedTuple):
    """Conv nodes of an ONNX graph: all of them, and those traced inside a RepMLP block."""

    total: int
    in_blocks: int | None  # None: the graph carries no module metadata (TorchScript exporter)


def conv_nodes(onnx_model: bytes | onnx.ModelProto) -> ConvCount:
    """Count the Conv nodes of ``onnx_model``, and those inside a :class:`RepMLPBlock`."""
    model = onnx.load_from_string(onnx_model) if isinstance(onnx_model, bytes) else onnx_model
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    meta = [{p.key: p.value for p in node.metadata_props} for node in model.graph.node]
    if not any("pkg.torch.onnx.class_hierarchy" in m for m in meta):
        return ConvCount(len(convs), None)
    in_blocks = sum(
        _BLOCK_CLASS in {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.class_hierarchy", "")
        for node in convs
    )
    return ConvCount(len(convs), in_blocks)


def op_counts(onnx_model: bytes | onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the graph holds, most frequent first."""
    model = onnx.load_from_string(onnx_model) if isinstance(onnx_model, bytes) else onnx_model
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


class RoundTrip(NamedTuple):
    """What :func:`round_trip` found."""

    max_abs_diff: float  # max |onnxruntime - PyTorch| on the test batch
    convs: ConvCount  # Conv nodes in the exported graph
    ops: dict[str, int]  # node count per op type
    onnx_bytes: int  # size of the serialized model


@torch.no_grad()
def round_trip(model: nn.Module, x: torch.Tensor, f: str | os.PathLike | io.BytesIO | None = None) -> RoundTrip:
    """Export ``model`` (eval mode), run the export in onnxruntime on ``x`` and compare with PyTorch.

    The export is made with a different batch size than ``x`` (one sample), so the comparison also
    checks the dynamic batch dimension.
    """
    model = model.eval()
    data = export_onnx(model, x[:1], f)
    expected = model(x).numpy()
    actual = onnxruntime_fn(data)(x)
    return RoundTrip(float(np.abs(actual - expected).max()), conv_nodes(data), op_counts(data), len(data))


def merged_small_repmlp_resnet(seed: int = 0, **kwargs) -> nn.Module:
    """A merged :func:`~repmlp_lite.nets.small_repmlp_resnet` (random weights, non-trivial BN statistics)."""
    torch.manual_seed(seed)
    return deploy(randomize_bn(small_repmlp_resnet(**kwargs), seed))


def engine_table(quick: bool = False, rounds: int = 3, min_run_time: float = 0.1) -> list[dict[str, Any]]:
    """The small RepMLP-ResNet (32x32 images): training form, merged form in PyTorch and the merged
    form exported to ONNX and run by onnxruntime (CPU), against the conv ResNet of the same depth
    in both engines. ``vs_merged_torch``: latency over that of the merged net in PyTorch. CPU only.
    """
    torch.manual_seed(0)
    train = randomize_bn(small_repmlp_resnet(width=16)).eval()
    merged = deploy(train)
    conv = randomize_bn(small_conv_resnet(width=16)).eval()
    merged_ort = onnxruntime_fn(export_onnx(merged))
    conv_ort = onnxruntime_fn(export_onnx(conv))
    rows = []
    for batch in (1,) if quick else (1, 32):
        x = torch.randn(batch, 3, 32, 32)
        fns = {"train": train, "merged": merged, "merged_ort": merged_ort, "conv": conv, "conv_ort": conv_ort}
        times = interleaved_ms(fns, x, rounds, min_run_time)
        ms = median_ms(times)
        for name, model, engine in [
            ("train", train, "torch"), ("merged", merged, "torch"), ("merged_ort", merged, "onnxruntime"),
            ("conv", conv, "torch"), ("conv_ort", conv, "onnxruntime"),
        ]:
            rows.append({
                "table": "engine",
                "model": "conv ResNet" if name.startswith("conv") else f"RepMLP-ResNet {name.split('_')[0]}",
                "engine": engine,
                "batch": batch,
                "ms": ms[name],
                "vs_merged_torch": median_ratio(times, name, "merged"),
                "params": count_parameters(model),
                "flops": count_flops(model, x),
            })
    return rows
