"""Full float32 on any device: TF32 off while a merge is computed and two forms are compared.

On NVIDIA GPUs since Ampere a float32 conv or matmul may run in **TF32**: the tensor cores round each
operand to a 10-bit mantissa (float32 keeps 23) and accumulate the products in float32. That is several
times faster, and each operand carries a relative rounding error of up to 2**-11 (about 5e-4) instead
of float32's 2**-24 (6e-8). torch's defaults differ by operation: cuDNN convs may use TF32
(``torch.backends.cudnn.allow_tf32`` is ``True``), cuBLAS matmuls may not
(``torch.backends.cuda.matmul.allow_tf32`` is ``False``). A RepMLP block's training form is convs and
its merged form is matmuls, so on a GPU with torch's defaults the two forms round differently, and
FC kernels built by a conv (:func:`~repmlp_lite.conv_as_fc.conv_to_fc`) come out rounded to TF32.
On a CPU none of this happens: TF32 is a GPU format.

torch spells these flags two ways: the legacy ones (``torch.backends.cudnn.allow_tf32``,
``torch.backends.cuda.matmul.allow_tf32``, ``torch.set_float32_matmul_precision``) and the newer
per-operation settings ``torch.backends.<backend>.<op>.fp32_precision`` (``"ieee"``, ``"tf32"``,
``"bf16"``, or ``"none"``: inherit). It keeps both and refuses to answer a legacy question when the two
disagree (cuBLAS asks it on every matmul). :func:`float32_precision` therefore sets both spellings so
that they agree, and puts back exactly what the caller had, in both, on exit (also after an exception).
:func:`full_float32` is the setting every comparison of this package runs under.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

# The per-operation settings this module sets, in this order: cuBLAS matmuls; cuDNN convs and RNNs
# (the legacy cudnn.allow_tf32 covers both, and torch checks that they agree with it); oneDNN's matmuls
# and convs on a CPU, which "bf16" or "tf32" there would round as well.
_SETTINGS = (
    torch.backends.cuda.matmul,
    torch.backends.cudnn.conv,
    torch.backends.cudnn.rnn,
    torch.backends.mkldnn.matmul,
    torch.backends.mkldnn.conv,
)


class _Flags(NamedTuple):
    """Everything :func:`float32_precision` changes, as the caller had it."""

    settings: tuple[str, ...]  # each of _SETTINGS' own fp32_precision ("none" where it inherits)
    matmul_precision: str  # legacy: torch.get_float32_matmul_precision()
    cudnn_tf32: bool  # legacy: torch.backends.cudnn.allow_tf32


def _set(settings: tuple[str, ...]) -> None:
    for setting, value in zip(_SETTINGS, settings, strict=True):
        setting.fp32_precision = value


def _read_flags() -> _Flags:
    """The caller's flags, in both spellings, even where they disagree (torch then refuses a legacy
    read): with every setting at ``"ieee"`` for a moment, the matmul getter can always answer and the
    cuDNN getter answers exactly when its legacy flag is ``False``."""
    settings = tuple(setting.fp32_precision for setting in _SETTINGS)
    try:
        _set(("ieee",) * len(_SETTINGS))
        matmul_precision = torch.get_float32_matmul_precision()
        try:
            cudnn_tf32 = torch.backends.cudnn.allow_tf32
        except RuntimeError:  # "ieee" convs and RNNs disagree with a legacy True
            cudnn_tf32 = True
    finally:
        _set(settings)
    return _Flags(settings, matmul_precision, cudnn_tf32)


def _write_flags(flags: _Flags) -> None:
    """Set both spellings: the legacy setters first (they also set some per-operation settings), then
    every per-operation setting, so that each ends as ``flags`` says."""
    torch.set_float32_matmul_precision(flags.matmul_precision)
    torch.backends.cudnn.allow_tf32 = flags.cudnn_tf32
    _set(flags.settings)


@contextlib.contextmanager
def float32_precision(tf32_convs: bool = False, tf32_matmuls: bool = False) -> Iterator[None]:
    """Run the body with float32 convs (cuDNN) and matmuls (cuBLAS) in TF32 or not, as asked, in both of
    torch's spellings; oneDNN's on a CPU in full float32. Restores the caller's flags exactly on exit."""
    saved = _read_flags()
    conv, matmul = ("tf32" if on else "ieee" for on in (tf32_convs, tf32_matmuls))
    try:
        _write_flags(_Flags((matmul, conv, conv, "ieee", "ieee"), "high" if tf32_matmuls else "highest", tf32_convs))
        yield
    finally:
        _write_flags(saved)


def full_float32() -> contextlib.AbstractContextManager[None]:
    """TF32 off for convs and matmuls on every device: float32 arithmetic rounds as float32 does.

    The context (or decorator) under which this package merges and compares forms; on a CPU with torch's
    defaults it changes nothing. Restores the caller's flags on exit, also after an exception.
    """
    return float32_precision(tf32_convs=False, tf32_matmuls=False)


class Precision(NamedTuple):
    """Where and at what precision a computation ran: ``str()`` gives e.g. ``"float32 on cuda:0, TF32 off"``."""

    device: str  # e.g. "cpu", "cuda:0"
    dtype: str  # e.g. "float32"
    tf32_convs: bool  # float32 convs could run in TF32 there and then
    tf32_matmuls: bool  # float32 matmuls could run in TF32 there and then

    def __str__(self) -> str:
        ops = [name for name, on in (("convs", self.tf32_convs), ("matmuls", self.tf32_matmuls)) if on]
        return f"{self.dtype} on {self.device}, TF32 {'on for ' + ' and '.join(ops) if ops else 'off'}"


def _cuda_setting(setting: Any) -> str:
    """A cuda setting's value in effect: its own, else the cuda backend's, else the generic one."""
    for value in (setting.fp32_precision, torch.backends.cudnn.fp32_precision, torch.backends.fp32_precision):
        if value != "none":
            return value
    return "ieee"


def current_precision(device: torch.device | str, dtype: torch.dtype) -> Precision:
    """The :class:`Precision` a float32 conv or matmul on ``device`` in ``dtype`` gets under the flags set
    now (TF32 only for float32 on CUDA)."""
    device = torch.device(device)
    tf32 = device.type == "cuda" and dtype == torch.float32
    return Precision(
        str(device),
        str(dtype).removeprefix("torch."),
        tf32 and _cuda_setting(torch.backends.cudnn.conv) == "tf32",
        tf32 and _cuda_setting(torch.backends.cuda.matmul) == "tf32",
    )
