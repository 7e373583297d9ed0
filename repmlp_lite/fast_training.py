"""The training form at the hardware's speed: the paper's mathematics in kernels that suit a
partitioned training step's shapes.

A RepMLP block trains on *partitions*. FC3's BatchNorm and each conv branch's BatchNorm see a batch
of many small maps: ``(N*P, O, h, w)`` in the RepMLP block, and in RepMLPNet's block
``(N*P*C/S, S, h, w)``, where the ``S`` share-sets are the channels. RepMLPNet-T224's first stage, at
batch 128, normalises a ``(8192, 1, 56, 56)`` tensor: one channel of 25.7 million values. Its conv
branches are grouped convs whose every group has one input and one output channel (a depthwise conv
over ``S`` channels) on the same tensor. Both are shapes the library kernels run badly:

* PyTorch's BatchNorm kernels give each channel to one worker: on a GPU a block of threads per
  channel collects the statistics (one block for T224's first stage, on a GPU of 132
  multiprocessors), on a CPU a thread per channel;
* a conv with one input and one output channel per group, on thousands of maps, is no layout the
  conv libraries tune for: on this machine's CPU (T224's first-stage branch at batch 8, a shared
  machine) its forward and backward took about 1 s where the same arithmetic as a depthwise conv on
  wider maps took 0.06 to 0.13 s (``python -m repmlp_lite.bench --train-step`` shows where a step's
  time goes).

The same numbers, differently computed (the state dicts do not change, so checkpoints load):

* :class:`PartitionBatchNorm1d`, :class:`PartitionBatchNorm2d`: in training mode on a GPU, once a
  channel holds at least :data:`MIN_VALUES_PER_CHANNEL` values, the statistics come from two reductions that
  use the whole machine whatever the channel count (:func:`channel_stats`: over the batch first,
  then over the positions), and the backward is written out by hand
  (:class:`BatchNormFunction`); the running statistics update as ``nn.BatchNorm`` updates them.
  The partition only permutes pixels, so these are the statistics of the un-partitioned map too.
* :class:`PartitionConv2d`: a depthwise conv (groups = in = out channels) of few channels on
  ``(A, S, h, w)`` runs as the same depthwise conv on the view ``(A/r, r*S, h, w)`` with its kernels
  repeated ``r`` times (:func:`widening`): each ``h x w`` map is still convolved alone, with its own
  zero padding.

Elsewhere both behave as their ``torch.nn`` bases. The reference formulation is those bases'
``forward``; :mod:`repmlp_lite.train_step_speed` times one against the other, and the tests check
that outputs, gradients and running statistics agree in float64.

:func:`for_speed` applies the training command's ``--channels-last`` and ``--compile`` options.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "COMPILE_MODES",
    "MIN_VALUES_PER_CHANNEL",
    "MIN_WIDE_BATCH",
    "NARROW_CHANNELS",
    "WIDE_CHANNELS",
    "BatchNormFunction",
    "PartitionBatchNorm1d",
    "PartitionBatchNorm2d",
    "PartitionConv2d",
    "channel_stats",
    "for_speed",
    "widening",
]

MIN_VALUES_PER_CHANNEL: dict[str, int] = {"cuda": 2**18}
"""Per device type: from how many values per channel (batch times positions) on a partition BatchNorm
in training mode computes its statistics by :func:`channel_stats`. Below it, and on device types not
listed, PyTorch's kernel runs.

On a GPU, below it the per-channel kernel has little to do, and a step of small tensors is bound by
the number of operations launched, which the hand-written form raises (about a dozen against two,
each way). The first stages of RepMLPNet-T224 at batch 128 hold 25.7 million (``S = 1``), 3.2
million (``S = 4``) and 0.4 million (``S = 16``) values per channel; Table 1's pure MLP at batch 128
at most 0.13 million. On a CPU, PyTorch's kernel (a thread per channel, vectorised) was faster than
the hand-written form for every shape of a RepMLPNet-T224 step measured while writing this (forward
and backward, 2 threads, a shared machine: ``(512, 1, 56, 56)`` 29 ms against 61 ms, ``(32, 128, 7,
7)`` 3.5 ms against 11.5 ms).
"""

WIDE_CHANNELS = 256
""":class:`PartitionConv2d` widens a depthwise conv of fewer than :data:`NARROW_CHANNELS` channels to at most
this many (:func:`widening`)."""

NARROW_CHANNELS = 16
"""A depthwise conv with at least this many channels runs as it is.

Measured while writing this (one thread, AMD EPYC, forward and backward, RepMLPNet-T224's conv branches
at batch 8): widened, the first stage's ``S = 1`` branches took 0.02x to 0.06x of the time, the second
stage's ``S = 4`` 0.25x to 0.3x, while at ``S = 16`` and ``S = 128`` the two forms were within the noise
of a shared machine, or the wide form slower. On a GPU, PyTorch runs a grouped conv of one channel per
group with its depthwise kernels from ``S = 2`` on; ``S = 1`` is an ordinary conv with one channel.
"""

MIN_WIDE_BATCH = 16
"""A widened conv keeps at least this many maps in its batch: PyTorch's CPU conv runs a ``1 x 1``
depthwise conv of fewer than 16 images on one thread as a loop over its groups (measured while
writing this: 256 channels of ``8 x 8``, forward and backward, 7.4 ms for 4 images against 0.4 ms
for 16 images of 64 channels).
"""

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""The modes of ``torch.compile`` that ``--compile`` takes (``reduce-overhead`` adds CUDA graphs)."""


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance per channel of ``x`` ``(N, C, L)``: two ``(C,)`` tensors, float32 for
    half-precision input (as PyTorch's BatchNorm keeps them), else in ``x``'s dtype.

    First over the batch, ``(N, C, L) -> (C, L)`` (every position's mean and variance: a reduction
    with ``C*L`` outputs, which a GPU spreads over all its cores whatever ``C`` is), then over the
    ``L`` positions, combining equal-sized groups exactly: the mean of the means, and the mean of
    the variances plus the variance of the means.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    var, mean = torch.var_mean(x, dim=0, correction=0)  # (C, L)
    if x.shape[2] == 1:
        return mean[:, 0], var[:, 0]
    return mean.mean(1), var.mean(1) + mean.var(1, correction=0)


def _channel_sum(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` ``(N, C, L)`` summed per channel in ``dtype``: over the batch, then over the positions."""
    return torch.sum(x, 0, dtype=dtype).sum(1)


class BatchNormFunction(torch.autograd.Function):
    """Training-mode BatchNorm with batch statistics by :func:`channel_stats` and its backward by hand.

    ``apply(x (N, C, *), weight (C,) or None, bias (C,) or None, eps)`` returns ``(y, mean, var)``:
    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` in ``x``'s dtype, and the batch mean and
    biased variance ``(C,)`` (not differentiable). With ``xc = x - mean``, ``n`` values per channel
    and ``g`` the gradient of ``y``, the backward is BatchNorm's textbook one::

        dx = weight / sqrt(var + eps) * (g - sum(g) / n - xc * sum(g * xc) / ((var + eps) * n))
        dweight = sum(g * xc) / sqrt(var + eps),   dbias = sum(g)      (sums per channel)

    which the tests check against PyTorch's in float64.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, var = channel_stats(x.reshape(x.shape[0], x.shape[1], -1))
        # normalising is elementwise: PyTorch's eval-mode kernel with these statistics
        y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        shape = (x.shape[0], x.shape[1], -1)
        g = grad_y.reshape(shape)
        xc = x.reshape(shape).to(mean.dtype) - mean[:, None]  # (N, C, L)
        n = xc.numel() // xc.shape[1]
        sum_g = _channel_sum(g, mean.dtype)
        sum_g_xc = _channel_sum(g * xc, mean.dtype)
        scale = invstd if weight is None else invstd * weight
        # dx = g * scale + xc * slope + offset, per channel
        slope = -scale * invstd * invstd * sum_g_xc / n
        offset = -scale * sum_g / n
        grad_x = (xc * slope[:, None]).add_(offset[:, None]).addcmul_(g, scale[:, None])
        grad_weight = None if weight is None else sum_g_xc * invstd
        grad_bias = None if weight is None else sum_g
        return grad_x.to(x.dtype).reshape(x.shape), grad_weight, grad_bias, None


class _PartitionBatchNorm(nn.modules.batchnorm._BatchNorm):
    """The training-mode forward of :class:`PartitionBatchNorm1d` and :class:`PartitionBatchNorm2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = x.numel() // x.shape[1] if x.dim() > 1 else 0
        least = MIN_VALUES_PER_CHANNEL.get(x.device.type)
        if not (self.training and x.is_contiguous() and least is not None and values >= max(least, 2)):
            return super().forward(x)
        self._check_input_dim(x)
        y, mean, var = BatchNormFunction.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:  # as nn.BatchNorm: count the batch, then the moving averages
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
                self.running_var.mul_(1 - factor).add_(var * (values / (values - 1)), alpha=factor)
        return y


class PartitionBatchNorm1d(_PartitionBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (same parameters, buffers and numbers) for a batch of many partitions:
    the RepMLP block's FC3 BN over ``(N*P, O*h*w)`` (module docstring)."""


class PartitionBatchNorm2d(_PartitionBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and numbers) for a batch of many small maps:
    the blocks' FC3 and conv-branch BNs (module docstring)."""


def widening(batch: int, channels: int) -> int:
    """The ``r`` of :class:`PartitionConv2d`: 1 from :data:`NARROW_CHANNELS` channels on, else the greatest
    common divisor of ``batch`` and the largest ``r`` with ``r * channels <= WIDE_CHANNELS`` and
    ``batch / r >= MIN_WIDE_BATCH``; 1 if that is below 2."""
    most = min(WIDE_CHANNELS // channels, batch // MIN_WIDE_BATCH)
    return 1 if channels >= NARROW_CHANNELS or most < 2 else math.gcd(batch, most)


class PartitionConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and numbers) that runs a depthwise conv (``groups`` = in = out
    channels, zero padding) on ``(A, S, h, w)`` as the depthwise conv on ``(A/r, r*S, h, w)`` with
    its kernels repeated ``r`` times (``r = widening(A, S)``); every other conv as ``nn.Conv2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.in_channels
        depthwise = self.groups == channels == self.out_channels and self.padding_mode == "zeros"
        r = widening(x.shape[0], channels) if depthwise and x.dim() == 4 and x.is_contiguous() else 1
        if r == 1:
            return super().forward(x)
        wide = x.view(x.shape[0] // r, r * channels, *x.shape[2:])
        bias = None if self.bias is None else self.bias.repeat(r)
        out = F.conv2d(wide, self.weight.repeat(r, 1, 1, 1), bias, self.stride, self.padding, self.dilation, r * channels)
        return out.view(x.shape[0], channels, *out.shape[2:])


def for_speed(model: nn.Module, compile_mode: str | None = None, channels_last: bool = False) -> nn.Module:
    """``model`` in the channels-last memory format (in place) if ``channels_last``, then wrapped by
    ``torch.compile(mode=compile_mode)`` unless ``compile_mode`` is ``None``; the state dict of
    ``model`` keeps its keys. ``compile_mode`` is one of :data:`COMPILE_MODES`."""
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES} or None, got {compile_mode!r}")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model if compile_mode is None else torch.compile(model, mode=compile_mode)
