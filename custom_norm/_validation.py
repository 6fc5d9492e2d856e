"""Input validation shared by every implementation of the ``norm_gated`` ops and their fake kernels."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd import forward_ad

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ACTIVATIONS = ("silu", "swish", "sigmoid")


class Problem(NamedTuple):
    """Sizes and dtypes derived from validated inputs (a NamedTuple: built on every call, cheaply)."""

    rows: int  # M: x.numel() // N, may be a SymInt under tracing
    cols: int  # N
    group_size: int
    ngroups: int
    stat_dtype: torch.dtype  # float64 for float64 x, float32 otherwise


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
        )


def _check_no_forward_ad() -> None:
    # Inside an op, a forward-AD level is visible but functorch's tangents are not: refuse any active level.
    if forward_ad._current_level >= 0:
        raise RuntimeError(
            "norm_gated does not support forward-mode AD (torch.autograd.forward_ad, torch.func.jvp, jacfwd, "
            "hessian): PyTorch would drop or zero its tangents without an error. Reverse mode is supported.")


def _check_same_device(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def _check_affine(name: str, t: torch.Tensor | None, x: torch.Tensor, n: int) -> None:
    if t is None:
        return
    _check_float(name, t)
    _check_same_device(name, t, x)
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match x's last dimension, got {tuple(t.shape)}")


def validate(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    z: torch.Tensor | None,
    eps: float,
    group_size: int | None,
    activation: str,
) -> Problem:
    """Check the arguments of ``norm_gated::fwd``; raise ValueError/TypeError naming the bad one."""
    _check_no_forward_ad()
    _check_float("x", x)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (..., N), got a 0-dimensional tensor")
    n = x.shape[-1]
    if n == 0:
        raise ValueError(f"x's last dimension N must be at least 1, got shape {tuple(x.shape)}")
    _check_affine("weight", weight, x, n)
    _check_affine("bias", bias, x, n)
    if z is not None:
        _check_float("z", z)
        _check_same_device("z", z, x)
        if z.shape != x.shape:
            raise ValueError(f"z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    if group_size is None:
        group_size = n
    elif isinstance(group_size, bool) or not isinstance(group_size, (int, torch.SymInt)):
        raise TypeError(f"group_size must be an int or None, got {type(group_size).__name__}")
    elif group_size <= 0:
        raise ValueError(f"group_size must be positive, got {group_size}")
    elif n % group_size != 0:
        raise ValueError(f"group_size {group_size} must divide x's last dimension N={n}")
    if not isinstance(eps, (float, int)) or isinstance(eps, bool) or not eps >= 0 or eps == float("inf"):
        raise ValueError(f"eps must be a finite non-negative float, got {eps!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    stat_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return Problem(
        rows=x.numel() // n,
        cols=n,
        group_size=group_size,
        ngroups=n // group_size,
        stat_dtype=stat_dtype,
    )


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """First and one-past-last byte of ``t``'s elements in its storage (torch strides are never negative)."""
    start = t.storage_offset() * t.element_size()
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return start, start + (last + 1) * t.element_size()


def _may_overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` may share memory: the same storage and intersecting byte spans.

    Conservative: two interleaved views that share no element (say, even and odd columns) count as
    overlapping. Works on fake tensors, which keep storage identity and offsets but have no data pointer.
    """
    if a.numel() == 0 or b.numel() == 0 or not torch._C._is_alias_of(a, b):
        return False
    a_start, a_end = _byte_span(a)
    b_start, b_end = _byte_span(b)
    return a_start < b_end and b_start < a_end


def validate_out_metadata(out: torch.Tensor, x: torch.Tensor) -> None:
    """Check that ``out`` is a tensor of x's shape, dtype and device: the part of ``validate_out`` that
    torch.compile can trace."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a Tensor, got {type(out).__name__}")
    if out.dtype != x.dtype:
        raise TypeError(f"out must have x's dtype {x.dtype}, got {out.dtype}")
    _check_same_device("out", out, x)
    if out.shape != x.shape:
        raise ValueError(f"out must have x's shape {tuple(x.shape)}, got {tuple(out.shape)}")


def validate_out(out: torch.Tensor, x: torch.Tensor, z: torch.Tensor | None) -> None:
    """Check the ``out`` argument of ``norm_gated::fwd_out``: x's shape, dtype and device, any strides, no
    element written twice, and no memory shared with x or z (the kernels read those while writing out)."""
    validate_out_metadata(out, x)
    if torch._debug_has_internal_overlap(out) == 1:
        raise ValueError("out must not have elements that share memory (an expanded tensor, say)")
    for name, t in (("x", x), ("z", z)):
        if t is not None and _may_overlap(out, t):
            raise ValueError(f"out must not share memory with {name}")


def validate_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    z: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    group_size: int | None,
    is_rms_norm: bool,
    activation: str,
    output_mask: list[bool],
) -> Problem:
    """Check the arguments of ``norm_gated::bwd``: the forward's, plus dy and the saved statistics."""
    p = validate(x, weight, bias, z, 0.0, group_size, activation)
    _check_float("dy", dy)
    _check_same_device("dy", dy, x)
    if dy.shape != x.shape:
        raise ValueError(f"dy must have x's shape {tuple(x.shape)}, got {tuple(dy.shape)}")
    stat_shape = (p.ngroups, p.rows)
    for name, t, shape in (("rstd", rstd, stat_shape), ("mean", mean, (0,) if is_rms_norm else stat_shape)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        _check_same_device(name, t, x)
        if t.dtype != p.stat_dtype or tuple(t.shape) != shape:
            raise ValueError(
                f"{name} must be the forward's statistics: shape {shape} and dtype {p.stat_dtype}, "
                f"got shape {tuple(t.shape)} and dtype {t.dtype}"
            )
    if len(output_mask) != 4:
        raise ValueError(f"output_mask must have 4 entries (dx, dz, dweight, dbias), got {len(output_mask)}")
    return p


def requested_grads(
    output_mask: list[bool], z: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> tuple[bool, bool, bool, bool]:
    """Which of ``(dx, dz, dweight, dbias)`` to compute: asked for in ``output_mask`` and of a present tensor."""
    want_dx, want_dz, want_dw, want_db = output_mask
    return want_dx, want_dz and z is not None, want_dw and weight is not None, want_db and bias is not None
