"""Native implementation of the gated norm: plain torch ops, for CPU and every non-CUDA device.

The math is the reference's, reorganised for speed: rows are processed in chunks small enough to stay in
cache, and every temporary is updated in place, so each chunk makes a few passes over cached float32 data
instead of the reference's dozen full-size tensors.
"""

from __future__ import annotations

import functools

import torch

from ._validation import Problem, requested_grads, validate, validate_backward, validate_out

# Work-buffer size of one chunk on CPU, in elements: 2 MiB of float32. Swept from 32K to 2M elements on a
# 2-core EPYC (L2 1 MiB/core, L3 32 MiB): 512K was fastest or within 5% on every shape (BENCHMARKS.md).
CPU_CHUNK_ELEMENTS = 1 << 19


def _activation(gate: torch.Tensor, activation: str, inplace: bool) -> torch.Tensor:
    """The activation in place, or into a new tensor in one pass (reference.activate takes two for SiLU,
    z * sigmoid(z), and two allocations: 12-19 % of a float32 gated forward on CPU, BENCHMARKS.md)."""
    if activation == "sigmoid":
        return gate.sigmoid_() if inplace else torch.sigmoid(gate)
    return torch.nn.functional.silu(gate, inplace=inplace)


@functools.lru_cache(maxsize=64)
def _constant(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``value`` as a 0-d tensor, made once (never written to)."""
    return torch.tensor(value, dtype=dtype, device=device)


def _row_chunks(x: torch.Tensor, rows: int, cols: int) -> list[slice | None]:
    """The row ranges to process one after another (none for no rows); ``[None]`` for a single chunk, which
    takes the whole tensors rather than views of them (the views cost a few µs a call at decode sizes,
    BENCHMARKS.md)."""
    # on accelerators one chunk: fewer launches matter more than cache reuse
    step = max(1, CPU_CHUNK_ELEMENTS // cols) if x.device.type == "cpu" else rows
    if rows == 0:
        return []
    if step >= rows:
        return [None]
    return [slice(start, start + step) for start in range(0, rows, step)]


def _chunk_rows(t: torch.Tensor | None, chunk: slice | None) -> torch.Tensor | None:
    """A chunk's rows of ``t`` (M, N): all of it for ``None``."""
    return t if t is None or chunk is None else t[chunk]


def _chunk_stats(t: torch.Tensor | None, chunk: slice | None) -> torch.Tensor | None:
    """A chunk's columns of the statistics ``t`` (ngroups, M): all of it for ``None``."""
    return t if t is None or chunk is None else t[:, chunk]


def _forward_chunk(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    ngroups: int,
    norm_before_gate: bool,
    is_rms_norm: bool,
    activation: str,
    dtype: torch.dtype,
    out: torch.Tensor,
    mean_out: torch.Tensor | None,
    rstd_out: torch.Tensor,
) -> None:
    """Normalize the rows ``x`` (m, N) into ``out``; write statistics into (ngroups, m) views.

    Every pass over the chunk counts on CPU: inputs already in the compute dtype are not copied (the first
    operation on them writes a new buffer instead of working in place), and the last operation writes into
    ``out`` directly.
    """
    m = x.shape[0]
    gate = None
    if z is not None:
        gate = z.to(dtype)
        gate = _activation(gate, activation, inplace=gate is not z)  # z itself is the caller's: not in place
    h = x.to(dtype)
    if gate is not None and not norm_before_gate:
        h = h.mul_(gate) if h is not x else h * gate
    groups = h.view(m, ngroups, -1)
    if is_rms_norm:
        # vecdot, not linalg.vector_norm: the latter loses float32 accuracy in proportion to the group size
        # (1e-5 relative at 2^20 columns); written straight into the (ngroups, m) statistics
        squares = torch.linalg.vecdot(groups, groups, out=rstd_out.T)
        # eps + squares / n in one operation (with a Python scalar each of the two took about 2 µs at decode sizes)
        rstd = torch.add(_constant(eps, dtype, x.device), squares, alpha=1 / groups.shape[-1], out=squares).rsqrt_()
        scale = rstd.unsqueeze(-1)
        h = (groups.mul_(scale) if h is not x else groups * scale).view(m, -1)
    else:
        # aten's fused layer norm (no affine): one pass where mean, centring and squares took four, twice as
        # fast on CPU; it returns a new normalized buffer and (m, ngroups, 1) statistics
        normed, mean, rstd = torch.native_layer_norm(groups, (groups.shape[-1],), None, None, eps)
        h = normed.view(m, -1)
        mean_out.copy_(mean.squeeze(-1).T)
        rstd_out.copy_(rstd.squeeze(-1).T)
    # h is now a buffer of our own: the affine factors apply in place, or into out when no gate follows
    gate_after = gate if norm_before_gate else None
    dest = h if gate_after is not None else out
    if weight is not None and bias is not None:
        torch.addcmul(bias, h, weight, out=dest)  # bias + h * weight in one pass
    elif weight is not None:
        torch.mul(h, weight, out=dest)
    elif bias is not None:
        torch.add(h, bias, out=dest)
    elif gate_after is None:
        out.copy_(h)
    if gate_after is not None:
        torch.mul(h, gate_after, out=out)


def _rows_view(out: torch.Tensor, p: Problem) -> torch.Tensor | None:
    """``out`` viewed as (M, N) to write into, or None when its strides allow no such view."""
    try:
        return out.view(p.rows, p.cols)
    except RuntimeError:
        return None


def norm_gated_fwd_native(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    z: torch.Tensor | None,
    eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = True,
    is_rms_norm: bool = False,
    activation: str = "silu",
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(out, mean, rstd)``; with ``out`` given (any strides), write into it and return it."""
    p = validate(x, weight, bias, z, eps, group_size, activation)
    if out is not None:
        validate_out(out, x, z)
    dtype = p.stat_dtype
    # (M, N) views; a 2-D input already is one (a reshape call costs about 1 µs at decode sizes)
    flat = x.dim() == 2
    x2 = x if flat else x.reshape(p.rows, p.cols)
    z2 = z if flat or z is None else z.reshape(p.rows, p.cols)
    w = weight.to(dtype) if weight is not None else None
    b = bias.to(dtype) if bias is not None else None
    out_rows = _rows_view(out, p) if out is not None else None
    result = out_rows if out_rows is not None else torch.empty((p.rows, p.cols), dtype=x.dtype, device=x.device)
    rstd = torch.empty((p.ngroups, p.rows), dtype=dtype, device=x.device)
    mean = torch.empty((0,) if is_rms_norm else (p.ngroups, p.rows), dtype=dtype, device=x.device)
    for chunk in _row_chunks(x, p.rows, p.cols):
        _forward_chunk(
            _chunk_rows(x2, chunk),
            _chunk_rows(z2, chunk),
            w,
            b,
            eps,
            p.ngroups,
            norm_before_gate,
            is_rms_norm,
            activation,
            dtype,
            _chunk_rows(result, chunk),
            None if is_rms_norm else _chunk_stats(mean, chunk),
            _chunk_stats(rstd, chunk),
        )
    if out is None:
        return result if flat else result.view(x.shape), mean, rstd
    if out_rows is None:
        out.copy_(result.view(x.shape))
    return out, mean, rstd


def gate_and_grad(z: torch.Tensor, activation: str, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``act(z)`` and, if asked, ``act'(z)``; ``z`` is read, never modified.

    sigmoid: ``s``, ``s (1 - s)``; silu: ``z s``, ``s (1 + z (1 - s)) = s (1 + z - z s)``.
    """
    s = torch.sigmoid(z)
    if activation == "sigmoid":
        return s, (1 - s).mul_(s) if with_grad else None
    gate = z * s
    return gate, torch.sub(z, gate).add_(1).mul_(s) if with_grad else None


def _backward_chunk(
    dy: torch.Tensor,
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor | None,
    rstd: torch.Tensor,
    ngroups: int,
    norm_before_gate: bool,
    dtype: torch.dtype,
    activation: str,
    dx_out: torch.Tensor | None,
    dz_out: torch.Tensor | None,
    dw_acc: torch.Tensor | None,
    db_acc: torch.Tensor | None,
) -> None:
    """Gradients of the rows ``x`` (m, N) given the statistics as (ngroups, m) views; see ``bwd``'s math."""
    m = x.shape[0]
    gate_before = z is not None and not norm_before_gate
    gate_after = z is not None and norm_before_gate
    gate = dgate = None
    if z is not None:
        gate, dgate = gate_and_grad(z.to(dtype), activation, dz_out is not None)
    # xhat: the normalized input, rebuilt from the saved statistics in a new buffer of the compute dtype (x's
    # dtype never holds more than it, so x * gate computes in it)
    xhat = torch.mul(x, gate) if gate_before else x.to(dtype, copy=True)
    xhat_groups = xhat.view(m, ngroups, -1)
    rstd = rstd.T.unsqueeze(-1)
    if mean is not None:
        xhat_groups.sub_(mean.T.unsqueeze(-1))
    xhat_groups.mul_(rstd)
    # g: dy', the gradient of y = xhat * w + b, later dxhat and dx.
    g = dy.to(dtype, copy=True)
    if gate_after:
        if dz_out is not None:
            y = xhat * weight if weight is not None else xhat.clone()
            if bias is not None:
                y.add_(bias)
            torch.mul(y.mul_(g), dgate, out=dz_out)
        g.mul_(gate)
    if db_acc is not None:
        db_acc.add_(g.sum(0))
    need_dx = dx_out is not None or (gate_before and dz_out is not None)
    if dw_acc is None and not need_dx:
        return
    prod = g * xhat  # dy' * xhat
    if dw_acc is not None:
        dw_acc.add_(prod.sum(0))
    if not need_dx:
        return
    if weight is not None:
        g.mul_(weight)  # dxhat
        prod.mul_(weight)  # dxhat * xhat
    g_groups = g.view(m, ngroups, -1)
    # dx' = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), without the mean(dxhat) for RMSNorm
    xhat_groups.mul_(prod.view(m, ngroups, -1).mean(-1, keepdim=True))
    if mean is not None:
        g_groups.sub_(g_groups.mean(-1, keepdim=True))
    g.sub_(xhat)
    g_groups.mul_(rstd)
    # the last products go straight into the outputs (rounded once to their dtype, as a copy would)
    if gate_before:
        if dz_out is not None:
            torch.mul(torch.mul(g, x, out=prod), dgate, out=dz_out)
        if dx_out is not None:
            torch.mul(g, gate, out=dx_out)
    elif dx_out is not None:
        dx_out.copy_(g)


def norm_gated_bwd_native(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    z: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    group_size: int | None,
    norm_before_gate: bool,
    is_rms_norm: bool,
    activation: str,
    output_mask: list[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    p = validate_backward(dy, x, weight, bias, z, mean, rstd, group_size, is_rms_norm, activation, output_mask)
    dtype = p.stat_dtype
    want_dx, want_dz, want_dw, want_db = requested_grads(output_mask, z, weight, bias)
    x2 = x.reshape(p.rows, p.cols)
    z2 = z.reshape(p.rows, p.cols) if z is not None else None
    dy2 = dy.reshape(p.rows, p.cols)
    w = weight.to(dtype) if weight is not None else None
    b = bias.to(dtype) if bias is not None else None
    dx = torch.empty((p.rows, p.cols), dtype=x.dtype, device=x.device) if want_dx else None
    dz = torch.empty((p.rows, p.cols), dtype=z.dtype, device=x.device) if want_dz else None
    dw_acc = torch.zeros(p.cols, dtype=dtype, device=x.device) if want_dw else None
    db_acc = torch.zeros(p.cols, dtype=dtype, device=x.device) if want_db else None
    if want_dx or want_dz or want_dw or want_db:
        for chunk in _row_chunks(x, p.rows, p.cols):
            _backward_chunk(
                _chunk_rows(dy2, chunk),
                _chunk_rows(x2, chunk),
                _chunk_rows(z2, chunk),
                w,
                b,
                None if is_rms_norm else _chunk_stats(mean, chunk),
                _chunk_stats(rstd, chunk),
                p.ngroups,
                norm_before_gate,
                dtype,
                activation,
                _chunk_rows(dx, chunk),
                _chunk_rows(dz, chunk),
                dw_acc,
                db_acc,
            )
    return (
        dx.view(x.shape) if dx is not None else None,
        dz.view(x.shape) if dz is not None else None,
        dw_acc.to(weight.dtype) if dw_acc is not None else None,
        db_acc.to(bias.dtype) if db_acc is not None else None,
    )
