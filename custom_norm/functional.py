"""Functional API with the original functions' names and argument order."""

from __future__ import annotations

import torch

from . import ops
from ._validation import validate


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
    if torch.compiler.is_compiling():
        # The op validates too, but under torch.compile its fake kernel's ValueError reaches the user wrapped
        # in a RuntimeError; raised here, in traced Python, it surfaces as itself. Eager pays nothing.
        validate(x, weight, bias, z, eps, group_size, activation)
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
    return layernorm_fn(x, weight, bias, z, eps, group_size, norm_before_gate, True, activation)
