"""Conv as FC: the FC kernel that does exactly what a conv does (paper, Sec. 3.3, Eq. 8 and 15).

A conv with kernel ``F`` of shape ``(O, C/g, K, K)`` and padding ``p`` acting on a
``(C, h, w)`` input is a linear map, so there is a matrix ``W(F, p)`` with

    M_out = RS(W(F, p) · RS(M_in)),

where ``RS`` flattens ``(C, h, w)`` to a vector (channel-major, then rows, then
columns) and back. Its columns are the conv applied to the basis vectors: convolve
an identity matrix, reshaped into ``C*h*w`` one-hot images, and read the results off
as rows. That is all :func:`conv_to_fc` does.

With ``groups = g`` the map is block-diagonal: group ``j``'s outputs see only group
``j``'s inputs. We keep the compact *grouped* form of shape ``(O*h'*w', (C/g)*h*w)``,
the weight layout of a grouped FC (a grouped 1x1 conv): rows of group ``j`` are the
``j``-th block of ``O/g`` output channels (the layout of the paper's Alg. 1, Appendix B).
:func:`grouped_to_dense` expands it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_divisible, check_positive
from .precision import full_float32


def conv_output_size(size: int, kernel_size: int, padding: int) -> int:
    """Spatial output size of a stride-1 conv: ``size + 2*padding - kernel_size + 1``."""
    return size + 2 * padding - kernel_size + 1


def _resolve_padding(kernel_size: int, padding: int | None, h: int, w: int) -> int:
    """Return the padding to use, checking it leaves a non-empty output."""
    if padding is None:
        if kernel_size % 2 == 0:
            raise ValueError(
                f"kernel size K={kernel_size} is even: padding=None means 'same' padding K//2, which needs "
                "an odd K; pass an explicit padding to use an even kernel"
            )
        return kernel_size // 2
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be None or an integer >= 0, got {padding!r}")
    if conv_output_size(h, kernel_size, padding) < 1 or conv_output_size(w, kernel_size, padding) < 1:
        raise ValueError(
            f"padding={padding} with kernel size K={kernel_size} leaves no output on a "
            f"{h}x{w} input: need h + 2*padding >= K and w + 2*padding >= K"
        )
    return padding


def conv_to_fc(
    kernel: torch.Tensor, h: int, w: int, padding: int | None = None, groups: int = 1
) -> torch.Tensor:
    """The FC kernel ``W(F, p)`` equivalent to a stride-1 conv on an ``h x w`` input.

    Args:
        kernel: conv weight ``F`` of shape ``(O, C/g, K, K)``.
        h, w: height and width of the input the FC acts on (one partition).
        padding: ``None`` for "same" padding ``K // 2`` (``K`` must be odd), or ``p >= 0``.
        groups: the conv's groups ``g``; ``g`` must divide ``O``.

    Returns:
        Tensor of shape ``(O*h'*w', (C/g)*h*w)`` with ``h' = h + 2p - K + 1`` (likewise ``w'``),
        in the kernel's dtype and device, computed with TF32 off
        (:func:`~repmlp_lite.precision.full_float32`: a GPU's default TF32 convs would round every entry
        to 10 mantissa bits). Row ``o*h'*w' + i*w' + j`` holds output pixel ``(o, i, j)``; column
        ``c*h*w + y*w + x`` holds input pixel ``(c, y, x)`` of the group.
    """
    if kernel.dim() != 4:
        raise ValueError(f"kernel must be 4-D (O, C/g, K, K), got shape {tuple(kernel.shape)}")
    out_channels, group_in, k_h, k_w = kernel.shape
    if k_h != k_w:
        raise ValueError(f"kernel must be square (K x K), got {k_h}x{k_w}")
    check_positive("h", h)
    check_positive("w", w)
    check_positive("groups", groups)
    check_divisible("out channels O", out_channels, "groups", groups)
    pad = _resolve_padding(k_h, padding, h, w)

    n_in = group_in * h * w
    # n_in one-hot images of one group, tiled over the g groups: (n_in, C, h, w).
    identity = torch.eye(n_in, dtype=kernel.dtype, device=kernel.device)
    identity = identity.reshape(n_in, group_in, h, w).repeat(1, groups, 1, 1)
    with full_float32():
        responses = F.conv2d(identity, kernel, padding=pad, groups=groups)  # (n_in, O, h', w')
    return responses.reshape(n_in, -1).t().contiguous()


def grouped_to_dense(fc_kernel: torch.Tensor, groups: int) -> torch.Tensor:
    """Expand a grouped FC kernel ``(R, I)`` into the dense block-diagonal ``(R, I*g)`` matrix.

    Group ``j`` owns rows ``j*R/g ... (j+1)*R/g - 1`` and columns ``j*I ... (j+1)*I - 1``.
    """
    if fc_kernel.dim() != 2:
        raise ValueError(f"fc_kernel must be 2-D, got shape {tuple(fc_kernel.shape)}")
    check_positive("groups", groups)
    check_divisible("fc_kernel rows", fc_kernel.shape[0], "groups", groups)
    return torch.block_diag(*fc_kernel.chunk(groups, dim=0))


def conv_bias_to_fc(bias: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """A conv bias ``(O,)`` as the FC bias ``(O*out_h*out_w,)``: every pixel of channel ``o`` gets ``bias[o]``."""
    if bias.dim() != 1:
        raise ValueError(f"bias must be 1-D (O,), got shape {tuple(bias.shape)}")
    return bias.repeat_interleave(out_h * out_w)


def fc_forward(
    x: torch.Tensor,
    fc_kernel: torch.Tensor,
    bias: torch.Tensor | None = None,
    groups: int = 1,
    out_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Apply a grouped FC kernel to images: ``M_out = RS(W · RS(M_in))``.

    Args:
        x: input ``(N, C, h, w)``.
        fc_kernel: grouped kernel ``(O*h'*w', (C/g)*h*w)`` as made by :func:`conv_to_fc`.
        bias: optional ``(O*h'*w',)``.
        groups: ``g``.
        out_hw: ``(h', w')``; ``None`` means ``(h, w)``, the "same"-padding case.

    Returns:
        ``(N, O, h', w')``.
    """
    n, c, h, w = x.shape
    check_divisible("in channels C", c, "groups", groups)
    rows, cols = fc_kernel.shape
    check_divisible("fc_kernel rows", rows, "groups", groups)
    if cols * groups != c * h * w:
        raise ValueError(
            f"fc_kernel has {cols} columns per group but the input has (C/g)*h*w = {c // groups * h * w}"
        )
    out_h, out_w = (h, w) if out_hw is None else out_hw
    check_divisible("fc_kernel rows", rows, "h'*w'", out_h * out_w)
    v = x.reshape(n, groups, cols)  # RS: one vector per group, (N, g, (C/g)*h*w)
    weight = fc_kernel.reshape(groups, rows // groups, cols)
    out = torch.einsum("ngi,goi->ngo", v, weight).reshape(n, rows)
    if bias is not None:
        out = out + bias
    return out.reshape(n, -1, out_h, out_w)  # RS back to images
