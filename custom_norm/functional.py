"""Functional API with the original functions' names and argument order."""

from __future__ import annotations

import torch

from . import dispatch


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
    out, _, _ = dispatch.norm_gated_fwd(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm, activation)
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


def layer_norm_fwd(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    z: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    group_size: int | None = None,
    norm_before_gate: bool = True,
    is_rms_norm: bool = False,
    activation: str = "silu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward alone, as mamba_ssm's ``_layer_norm_fwd``: returns ``(out, mean, rstd)``.

    With ``out`` given (x's shape, dtype and device, any strides, no memory shared with x or z) the result is
    written into it, also under ``torch.compile``, and ``out`` itself is returned; this mutating form has no
    autograd (train with ``layernorm_fn``). Without ``out`` a new tensor is returned, differentiable as
    ``layernorm_fn``'s. ``mean`` and ``rstd`` have this package's layout: ``(ngroups, M)`` (the original's
    flat ``ngroups * M``, in the same order), and ``mean`` is empty for RMSNorm rather than None.
    """
    if out is not None and torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in (x, weight, bias, z, out)):
        raise RuntimeError("layer_norm_fwd with out= does not support autograd: call it under torch.no_grad(), "
                           "or train with layernorm_fn / rmsnorm_fn, which return a new tensor")
    if out is None:
        return dispatch.norm_gated_fwd(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm, activation)
    mean, rstd = dispatch.norm_gated_fwd_out(x, weight, bias, z, out, eps, group_size, norm_before_gate, is_rms_norm,
                                         activation)
    return out, mean, rstd
