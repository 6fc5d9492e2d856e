"""The readable specification of the gated norm, in plain PyTorch.

Tests compare every implementation against this function evaluated in float64; benchmarks use it as the
"plain PyTorch" baseline (eager and under torch.compile).
"""

from __future__ import annotations

import torch

from ._validation import validate


def activate(z: torch.Tensor, activation: str) -> torch.Tensor:
    """``silu``/``swish``: ``z * sigmoid(z)``; ``sigmoid``: ``sigmoid(z)``."""
    return torch.sigmoid(z) if activation == "sigmoid" else z * torch.sigmoid(z)


def norm_gated_reference(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    z: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = True,
    is_rms_norm: bool = False,
    activation: str = "silu",
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(out, mean, rstd)`` exactly as ``norm_gated::fwd`` defines them.

    ``compute_dtype`` overrides the math dtype (float32, or float64 for float64 x): tests pass float64.
    ``out`` is cast to x's dtype; ``mean``/``rstd`` have shape ``(ngroups, M)`` in the math dtype, and
    ``mean`` is empty for RMSNorm.
    """
    p = validate(x, weight, bias, z, eps, group_size, activation)
    dtype = compute_dtype or p.stat_dtype
    h = x.to(dtype)
    gate = activate(z.to(dtype), activation) if z is not None else None
    if gate is not None and not norm_before_gate:
        h = h * gate
    h = h.reshape(p.rows, p.ngroups, p.group_size)
    if is_rms_norm:
        mean = h.new_empty((0,))
        rstd = torch.rsqrt(h.square().mean(-1) + eps)
        h = h * rstd[..., None]
    else:
        mean = h.mean(-1)
        rstd = torch.rsqrt((h - mean[..., None]).square().mean(-1) + eps)
        h = (h - mean[..., None]) * rstd[..., None]
        mean = mean.T.contiguous()
    h = h.reshape(x.shape)
    if weight is not None:
        h = h * weight.to(dtype)
    if bias is not None:
        h = h + bias.to(dtype)
    if gate is not None and norm_before_gate:
        h = h * gate
    return h.to(x.dtype), mean, rstd.T.contiguous()


def activate_grad(z: torch.Tensor, activation: str) -> torch.Tensor:
    """Derivative of :func:`activate`: ``s (1 - s)`` for sigmoid, ``s (1 + z (1 - s))`` for SiLU."""
    s = torch.sigmoid(z)
    return s * (1 - s) if activation == "sigmoid" else s * (1 + z * (1 - s))


def norm_gated_bwd_reference(
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
) -> tuple[torch.Tensor | None, ...]:
    """The gradients ``(dx, dz, dweight, dbias)`` of ``norm_gated::bwd``, written out plainly.

    With ``h`` the normalized input (x, or x * act(z) when gating before the norm), ``xhat`` its
    normalization and ``dxhat`` the gradient reaching ``xhat``, per group:
    ``dh = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))`` (RMSNorm drops ``mean(dxhat)``).
    """
    dtype = rstd.dtype
    n = x.shape[-1]
    gs = group_size or n
    rows = x.numel() // n
    h = x.reshape(rows, n).to(dtype)
    dout = dy.reshape(rows, n).to(dtype)
    zf = z.reshape(rows, n).to(dtype) if z is not None else None
    gate = activate(zf, activation) if zf is not None else None
    if gate is not None and not norm_before_gate:
        h = h * gate
    groups = h.reshape(rows, -1, gs)
    rstd_g = rstd.T.reshape(rows, -1, 1)
    xhat = (groups if is_rms_norm else groups - mean.T.reshape(rows, -1, 1)) * rstd_g
    xhat = xhat.reshape(rows, n)
    w = weight.to(dtype) if weight is not None else None
    dz = None
    if gate is not None and norm_before_gate:
        y = xhat * w if w is not None else xhat
        y = y + bias.to(dtype) if bias is not None else y
        dz = dout * y * activate_grad(zf, activation)
        dout = dout * gate
    dweight = (dout * xhat).sum(0) if weight is not None else None
    dbias = dout.sum(0) if bias is not None else None
    dxhat = (dout * w if w is not None else dout).reshape(rows, -1, gs)
    xhat = xhat.reshape(rows, -1, gs)
    dh = dxhat - xhat * (dxhat * xhat).mean(-1, keepdim=True)
    if not is_rms_norm:
        dh = dh - dxhat.mean(-1, keepdim=True)
    dh = (dh * rstd_g).reshape(rows, n)
    dx = dh
    if gate is not None and not norm_before_gate:
        dz = dh * x.reshape(rows, n).to(dtype) * activate_grad(zf, activation)
        dx = dh * gate
    want_dx, want_dz, want_dw, want_db = output_mask

    def cast(grad, like, wanted):
        return grad.to(like.dtype).reshape(like.shape) if wanted and grad is not None else None

    return cast(dx, x, want_dx), cast(dz, z, want_dz), cast(dweight, weight, want_dw), cast(dbias, bias, want_db)
