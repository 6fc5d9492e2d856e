"""Registrations of the ``norm_gated`` operators: the ops, their per-device kernels, fake kernels and autograd."""

from __future__ import annotations

import torch

from ._validation import Problem, requested_grads, validate, validate_backward, validate_out
from .native import norm_gated_bwd_native, norm_gated_fwd_native


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


def _stats_like(x: torch.Tensor, p: Problem, is_rms_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty ``(mean, rstd)`` of the forward's shapes and dtype, for fake kernels."""
    rstd = x.new_empty((p.ngroups, p.rows), dtype=p.stat_dtype)
    mean = x.new_empty((0,) if is_rms_norm else (p.ngroups, p.rows), dtype=p.stat_dtype)
    return mean, rstd


@fwd.register_fake
def _fwd_fake(x, weight, bias, z, eps=1e-6, group_size=None, norm_before_gate=True, is_rms_norm=False,
              activation="silu"):
    p = validate(x, weight, bias, z, eps, group_size, activation)
    out = x.new_empty(x.shape)  # new_empty is always contiguous
    return out, *_stats_like(x, p, is_rms_norm)


@torch.library.custom_op("norm_gated::fwd_out", mutates_args=("out",))
def fwd_out(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    z: torch.Tensor | None,
    out: torch.Tensor,
    eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = True,
    is_rms_norm: bool = False,
    activation: str = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm_gated::fwd`` writing its output into ``out``; returns ``(mean, rstd)``.

    ``out`` must have x's shape and dtype and be on x's device; any strides will do, and only its own
    elements are written. It may share no memory with x or z (conservatively: no intersecting byte ranges
    in one storage). ``out`` is not returned: a custom op cannot return an alias of an input.
    The op has no autograd formula (PyTorch allows none for a mutating custom op): ``out`` is not tracked
    and a backward through mean or rstd raises. Train through ``norm_gated::fwd``; ``layer_norm_fwd`` with
    ``out=`` raises when an input requires grad.

    This body is the default (CompositeExplicitAutograd) kernel: CPU and every device without its own.
    """
    _, mean, rstd = norm_gated_fwd_native(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm,
                                          activation, out=out)
    return mean, rstd


@fwd_out.register_kernel("cuda")
def _fwd_out_cuda(x, weight, bias, z, out, eps=1e-6, group_size=None, norm_before_gate=True, is_rms_norm=False,
                  activation="silu"):
    from .kernels.forward import norm_gated_fwd_triton

    _, mean, rstd = norm_gated_fwd_triton(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm,
                                          activation, out=out)
    return mean, rstd


@fwd_out.register_fake
def _fwd_out_fake(x, weight, bias, z, out, eps=1e-6, group_size=None, norm_before_gate=True, is_rms_norm=False,
                  activation="silu"):
    p = validate(x, weight, bias, z, eps, group_size, activation)
    validate_out(out, x, z)
    return _stats_like(x, p, is_rms_norm)


@torch.library.custom_op(
    "norm_gated::bwd",
    mutates_args=(),
    schema="(Tensor dy, Tensor x, Tensor? weight, Tensor? bias, Tensor? z, Tensor mean, Tensor rstd, "
    "SymInt? group_size, bool norm_before_gate, bool is_rms_norm, str activation, bool[4] output_mask) "
    "-> (Tensor?, Tensor?, Tensor?, Tensor?)",
)
def bwd(dy, x, weight, bias, z, mean, rstd, group_size, norm_before_gate, is_rms_norm, activation, output_mask):
    """Gradients of ``norm_gated::fwd``'s ``out``; returns ``(dx, dz, dweight, dbias)``.

    ``dy`` is the gradient of ``out`` (x's shape); ``x, weight, bias, z`` and the flags are the forward's
    arguments and ``mean, rstd`` its statistics (the forward's ``eps`` is folded into ``rstd``).
    ``output_mask`` says which of ``(dx, dz, dweight, dbias)`` to compute: the others, and those of absent
    tensors, are None. Each gradient has the dtype and shape of its tensor and is contiguous; the
    dweight/dbias reductions over rows are deterministic.

    This body is the default (CompositeExplicitAutograd) kernel: CPU and every device without its own.
    """
    return norm_gated_bwd_native(dy, x, weight, bias, z, mean, rstd, group_size, norm_before_gate, is_rms_norm,
                                 activation, output_mask)


@bwd.register_kernel("cuda")
def _bwd_cuda(dy, x, weight, bias, z, mean, rstd, group_size, norm_before_gate, is_rms_norm, activation,
              output_mask):
    from .kernels.backward import norm_gated_bwd_triton

    return norm_gated_bwd_triton(dy, x, weight, bias, z, mean, rstd, group_size, norm_before_gate, is_rms_norm,
                                 activation, output_mask)


@bwd.register_fake
def _bwd_fake(dy, x, weight, bias, z, mean, rstd, group_size, norm_before_gate, is_rms_norm, activation,
              output_mask):
    validate_backward(dy, x, weight, bias, z, mean, rstd, group_size, is_rms_norm, activation, output_mask)
    want_dx, want_dz, want_dw, want_db = requested_grads(output_mask, z, weight, bias)
    return (
        x.new_empty(x.shape) if want_dx else None,
        z.new_empty(z.shape) if want_dz else None,
        weight.new_empty(weight.shape) if want_dw else None,
        bias.new_empty(bias.shape) if want_db else None,
    )


def _bwd_backward(ctx, *grads):
    raise RuntimeError("norm_gated: double backward is not supported")


bwd.register_autograd(_bwd_backward)


def fwd_setup_context(ctx, inputs, output):
    x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm, activation = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for mean and rstd (two kernels a backward)
    ctx.save_for_backward(x, weight, bias, z, mean, rstd)  # not out: backward rebuilds what it needs
    ctx.flags = (group_size, norm_before_gate, is_rms_norm, activation)


def fwd_backward_through(bwd_impl, ctx, dout):
    """The forward's backward, computing the gradients with ``bwd_impl`` (the op, or an implementation)."""
    if dout is None:  # grads are not materialized (fwd_setup_context); gradcheck's undefined-gradient check
        return (None,) * 9  # calls the backward with none for out
    x, weight, bias, z, mean, rstd = ctx.saved_tensors
    need_x, need_weight, need_bias, need_z = ctx.needs_input_grad[:4]
    dx, dz, dweight, dbias = bwd_impl(dout, x, weight, bias, z, mean, rstd, *ctx.flags,
                                      [need_x, need_z, need_weight, need_bias])
    return dx, dweight, dbias, dz, None, None, None, None, None


def _fwd_backward(ctx, dout, dmean, drstd):
    return fwd_backward_through(bwd, ctx, dout)


fwd.register_autograd(_fwd_backward, setup_context=fwd_setup_context)
