"""TF32 off, and back exactly as it was: repmlp_lite.precision under both of torch's spellings of the flags.

torch keeps the legacy flags (``cudnn.allow_tf32``, ``cuda.matmul.allow_tf32``, the float32 matmul
precision) beside the per-operation ``fp32_precision`` settings, and refuses a legacy read when the two
disagree. Every flag is readable and settable on a CPU, so these tests run anywhere: each starts the
caller's flags one way, enters and leaves the context (also by an exception), and compares everything
torch lets one read, plus the legacy values it refuses to read while the two spellings disagree.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from repmlp_lite.precision import Precision, current_precision, float32_precision, full_float32

B = torch.backends
# every fp32_precision setting torch has: generic, per backend, per operation
NODES = {
    "generic": B,
    "cuda": B.cudnn,  # cudnn's own setting is the cuda backend's ("cuda", "all")
    "cuda.matmul": B.cuda.matmul,
    "cudnn.conv": B.cudnn.conv,
    "cudnn.rnn": B.cudnn.rnn,
    "mkldnn": B.mkldnn,
    "mkldnn.matmul": B.mkldnn.matmul,
    "mkldnn.conv": B.mkldnn.conv,
    "mkldnn.rnn": B.mkldnn.rnn,
}
LEAVES = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")
LEGACY: dict[str, Callable[[], object]] = {
    "matmul precision": torch.get_float32_matmul_precision,
    "cuda.matmul.allow_tf32": lambda: B.cuda.matmul.allow_tf32,
    "cudnn.allow_tf32": lambda: B.cudnn.allow_tf32,
}


def _read(getter: Callable[[], object]) -> object:
    try:
        return getter()
    except RuntimeError as err:  # torch refuses: the two spellings disagree
        return f"refused: {str(err)[:40]}"


def _hidden_legacy() -> tuple[object, object]:
    """The legacy matmul precision and cuDNN flag even where torch refuses to read them: with the
    per-operation matmul settings at "ieee" the matmul getter answers; with cuDNN's conv and RNN at
    "tf32" its getter answers exactly when its legacy flag is True. Puts the settings back."""
    saved = {name: NODES[name].fp32_precision for name in LEAVES}
    try:
        B.cuda.matmul.fp32_precision = B.mkldnn.matmul.fp32_precision = "ieee"
        matmul = torch.get_float32_matmul_precision()
        B.cudnn.conv.fp32_precision = B.cudnn.rnn.fp32_precision = "tf32"
        cudnn = _read(lambda: B.cudnn.allow_tf32) is True
    finally:
        for name in LEAVES:
            NODES[name].fp32_precision = saved[name]
    return matmul, cudnn


def _state() -> dict[str, object]:
    state: dict[str, object] = {name: node.fp32_precision for name, node in NODES.items()}
    state |= {name: _read(getter) for name, getter in LEGACY.items()}
    state["hidden legacy"] = _hidden_legacy()
    return state


def _reset_to_torch_defaults() -> None:
    torch.set_float32_matmul_precision("highest")
    B.cudnn.allow_tf32 = True
    for name in ("generic", "cuda", "mkldnn"):
        NODES[name].fp32_precision = "none"
    for name in LEAVES:
        NODES[name].fp32_precision = "tf32" if name.startswith("cudnn.") else "none"


@pytest.fixture
def torch_defaults():
    """Start from torch's default flags, and leave them so for the other tests, whatever happens."""
    _reset_to_torch_defaults()
    defaults = _state()
    assert defaults["cudnn.allow_tf32"] is True and defaults["cuda.matmul.allow_tf32"] is False
    yield defaults
    _reset_to_torch_defaults()


def _setattr(name: str, attribute: str, value: object) -> Callable[[], None]:
    return lambda: setattr(NODES[name], attribute, value)


# how a caller may have set its flags before entering, in either spelling or both
CALLERS: dict[str, Callable[[], None]] = {
    "torch's defaults": lambda: None,
    "legacy: matmuls TF32": _setattr("cuda.matmul", "allow_tf32", True),
    "legacy: convs not TF32": _setattr("cuda", "allow_tf32", False),
    "legacy: matmul precision medium": lambda: torch.set_float32_matmul_precision("medium"),
    "legacy: matmul precision high": lambda: torch.set_float32_matmul_precision("high"),
    "new: matmuls tf32": _setattr("cuda.matmul", "fp32_precision", "tf32"),
    "new: convs ieee": _setattr("cudnn.conv", "fp32_precision", "ieee"),
    "new: cuda backend tf32": _setattr("cuda", "fp32_precision", "tf32"),
    "new: generic tf32": _setattr("generic", "fp32_precision", "tf32"),
    "new: oneDNN bf16": _setattr("mkldnn", "fp32_precision", "bf16"),
}


@pytest.mark.parametrize("caller", list(CALLERS))
def test_full_float32_turns_tf32_off_and_restores_the_callers_flags(caller, torch_defaults):
    CALLERS[caller]()
    before = _state()
    if caller != "torch's defaults":
        assert before != torch_defaults  # the caller's setting is visible in the state compared
    with full_float32():
        inside = _state()
        assert current_precision("cuda", torch.float32) == Precision("cuda", "float32", False, False)
    # inside, both spellings agree that nothing runs in TF32 (or bf16), and torch answers every read
    assert {inside[name] for name in ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv")} == {
        "ieee"
    }
    assert inside["matmul precision"] == "highest" and inside["cuda.matmul.allow_tf32"] is False
    assert inside["cudnn.allow_tf32"] is False and inside["hidden legacy"] == ("highest", False)
    assert _state() == before
    with pytest.raises(KeyError), full_float32():
        raise KeyError("inside")
    assert _state() == before


def test_legacy_state_hidden_by_a_disagreement_is_restored(torch_defaults):
    """A caller who set the legacy flag, then the new setting the other way: torch refuses the legacy
    read, and the legacy value underneath (True) must survive the context."""
    B.cudnn.allow_tf32 = True
    B.cudnn.conv.fp32_precision = "ieee"
    before = _state()
    assert str(before["cudnn.allow_tf32"]).startswith("refused") and before["hidden legacy"][1] is True
    with full_float32():
        pass
    assert _state() == before


@pytest.mark.parametrize(("convs", "matmuls"), [(True, False), (False, True), (True, True)])
def test_float32_precision_sets_both_spellings_alike(convs, matmuls, torch_defaults):
    with float32_precision(tf32_convs=convs, tf32_matmuls=matmuls):
        state = _state()
        precision = current_precision("cuda:0", torch.float32)
    assert state["cudnn.allow_tf32"] is convs and state["cuda.matmul.allow_tf32"] is matmuls
    assert state["cudnn.conv"] == ("tf32" if convs else "ieee") and state["mkldnn.matmul"] == "ieee"
    assert (precision.tf32_convs, precision.tf32_matmuls) == (convs, matmuls)
    assert _state() == torch_defaults


def test_current_precision_names_device_dtype_and_tf32(torch_defaults):
    # torch's defaults: TF32 for cuDNN convs, not for cuBLAS matmuls; never on a CPU or in float64
    assert str(current_precision("cuda:0", torch.float32)) == "float32 on cuda:0, TF32 on for convs"
    assert str(current_precision("cpu", torch.float32)) == "float32 on cpu, TF32 off"
    assert str(current_precision("cuda", torch.float64)) == "float64 on cuda, TF32 off"
    with float32_precision(tf32_convs=True, tf32_matmuls=True):
        assert str(current_precision("cuda", torch.float32)) == "float32 on cuda, TF32 on for convs and matmuls"


def test_on_a_cpu_full_float32_changes_nothing(torch_defaults):
    gen = torch.Generator().manual_seed(0)
    x, kernel, matrix = (torch.randn(shape, generator=gen) for shape in ((2, 8, 12, 12), (8, 8, 3, 3), (96, 96)))

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        return F.conv2d(x, kernel, padding=1), x.reshape(16, -1)[:, :96] @ matrix

    outside = compute()
    with full_float32():
        inside = compute()
    assert all(torch.equal(a, b) for a, b in zip(outside, inside))


def test_full_float32_works_as_a_decorator(torch_defaults):
    @full_float32()
    def convs_flag() -> bool:
        return B.cudnn.allow_tf32

    assert convs_flag() is False and convs_flag() is False  # re-entered on every call
    assert B.cudnn.allow_tf32 is True
