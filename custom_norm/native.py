"""Native implementation of the gated norm: plain torch ops, for CPU and every non-CUDA device.

The math is the reference's, reorganised for speed: rows are processed in chunks small enough to stay in
cache, and every temporary is updated in place, so each chunk makes a few passes over cached float32 data
instead of the reference's dozen full-size tensors.
"""

from __future__ import annotations

import torch

from ._validation import validate

# Work-buffer size of one chunk on CPU, in elements (256 KiB of float32: fits L2 with its gate buffer).
CPU_CHUNK_ELEMENTS = 1 << 16


def activate_(gate: torch.Tensor, activation: str) -> torch.Tensor:
    """Apply the activation in place."""
    if activation == "sigmoid":
        return gate.sigmoid_()
    return torch.nn.functional.silu(gate, inplace=True)


def _rows_per_chunk(x: torch.Tensor, rows: int, cols: int) -> int:
    if x.device.type != "cpu":
        return max(rows, 1)  # on accelerators one chunk: fewer launches matter more than cache reuse
    return max(1, CPU_CHUNK_ELEMENTS // cols)


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
    """Normalize the rows ``x`` (m, N) into ``out``; write statistics into (ngroups, m) views."""
    m = x.shape[0]
    h = x.to(dtype, copy=True)
    gate = None
    if z is not None:
        gate = activate_(z.to(dtype, copy=True), activation)
        if not norm_before_gate:
            h.mul_(gate)
    groups = h.view(m, ngroups, -1)
    if is_rms_norm:
        var = torch.linalg.vector_norm(groups, dim=-1).square_().div_(groups.shape[-1])
    else:
        var, mean = torch.var_mean(groups, dim=-1, correction=0)
        groups.sub_(mean.unsqueeze(-1))
        mean_out.copy_(mean.T)
    rstd = var.add_(eps).rsqrt_()
    groups.mul_(rstd.unsqueeze(-1))
    rstd_out.copy_(rstd.T)
    if weight is not None:
        h.mul_(weight)
    if bias is not None:
        h.add_(bias)
    if gate is not None and norm_before_gate:
        h.mul_(gate)
    out.copy_(h)


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p = validate(x, weight, bias, z, eps, group_size, activation)
    dtype = p.stat_dtype
    x2 = x.reshape(p.rows, p.cols)
    z2 = z.reshape(p.rows, p.cols) if z is not None else None
    w = weight.to(dtype) if weight is not None else None
    b = bias.to(dtype) if bias is not None else None
    out = torch.empty((p.rows, p.cols), dtype=x.dtype, device=x.device)
    rstd = torch.empty((p.ngroups, p.rows), dtype=dtype, device=x.device)
    mean = torch.empty((0,) if is_rms_norm else (p.ngroups, p.rows), dtype=dtype, device=x.device)
    step = _rows_per_chunk(x, p.rows, p.cols)
    for start in range(0, p.rows, step):
        rows = slice(start, start + step)
        _forward_chunk(
            x2[rows],
            z2[rows] if z2 is not None else None,
            w,
            b,
            eps,
            p.ngroups,
            norm_before_gate,
            is_rms_norm,
            activation,
            dtype,
            out[rows],
            None if is_rms_norm else mean[:, rows],
            rstd[:, rows],
        )
    return out.view(x.shape), mean, rstd
