"""Registrations of the ``norm_gated`` operators: the op, its per-device kernels and its fake kernel."""

from __future__ import annotations

import torch

from ._validation import validate
from .native import norm_gated_fwd_native


@torch.library.custom_op("norm_gated::fwd", mutates_args=())
def fwd(
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
    """Gated LayerNorm/RMSNorm over groups of the last dimension; returns ``(out, mean, rstd)``.

    This body is the default (CompositeExplicitAutograd) kernel: CPU and every device without its own.
    """
    return norm_gated_fwd_native(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm, activation)


@fwd.register_kernel("cuda")
def _fwd_cuda(x, weight, bias, z, eps=1e-6, group_size=None, norm_before_gate=True, is_rms_norm=False,
              activation="silu"):
    from .kernels.forward import norm_gated_fwd_triton

    return norm_gated_fwd_triton(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm, activation)


@fwd.register_fake
def _fwd_fake(x, weight, bias, z, eps=1e-6, group_size=None, norm_before_gate=True, is_rms_norm=False,
              activation="silu"):
    p = validate(x, weight, bias, z, eps, group_size, activation)
    out = x.new_empty(x.shape)  # new_empty is always contiguous
    rstd = x.new_empty((p.ngroups, p.rows), dtype=p.stat_dtype)
    mean = x.new_empty((0,) if is_rms_norm else (p.ngroups, p.rows), dtype=p.stat_dtype)
    return out, mean, rstd
