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
