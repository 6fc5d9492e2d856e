"""Functional API with the original functions' names and argument order."""

from __future__ import annotations

import torch

from . import ops


def layernorm_fn(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    z: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = True,
    is_rms_norm: bool = False,
    activation: str = "silu",
) -> torch.Tensor:
    """Gated LayerNorm (or RMSNorm with ``is_rms_norm=True``) of the last dimension of ``x``."""
    out, _, _ = ops.fwd(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm, activation)
    return out


def rmsnorm_fn(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    z: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = True,
    activation: str = "silu",
) -> torch.Tensor:
    """Gated RMSNorm of the last dimension of ``x``."""
    out, _, _ = ops.fwd(x, weight, bias, z, eps, group_size, norm_before_gate, True, activation)
    return out
