"""How the public functions reach the implementations: through the op, or directly when nothing can tell.

At decode shapes the kernel takes a few microseconds and the call around it most of the time: through
``torch.ops.norm_gated.fwd`` the dispatcher enters Python twice (the registered autograd, then the device's
kernel), and the registered autograd wraps a generated ``autograd.Function``. In plain eager code (CPU or CUDA
tensors, no tracing, no mode, no transform, no profiler) this module calls the same implementations directly,
through an ``autograd.Function`` that uses the op's own setup_context and backward. Everything else goes
through the op: torch.compile, export, torch.jit.trace, fake and functional tensors, dispatch and function
modes, functorch transforms, tensor subclasses, the profiler (so the op shows up by name) and devices other
than CPU and CUDA (which may register their own kernels). Both routes validate the inputs and give bitwise the
same results.

Under torch.compile the inputs are validated here, in traced Python, before the op is called: the op's fake
kernel validates too, but its ValueError reaches the user wrapped in a RuntimeError, while one raised in
traced code surfaces as itself (Dynamo gives up on the frame and runs it eagerly, where it raises again).
"""

from __future__ import annotations

import functools

import torch
from torch._C._functorch import unwrap_if_dead

from . import ops
from ._validation import validate, validate_out_metadata
from .native import norm_gated_bwd_native, norm_gated_fwd_native

_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def direct_call_ok(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether calling the implementation directly is indistinguishable from calling the op."""
    if (torch.compiler.is_compiling()
            or torch._C._get_tracing_state() is not None  # torch.jit.trace (and the ONNX exporter on it)
            or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled()
            or torch._C._functorch.peek_interpreter_stack() is not None
            or torch._C._autograd._profiler_enabled()
            or type(x) not in _PLAIN_TENSOR_TYPES
            or x.device.type not in ("cpu", "cuda")):
        return False
    return all(t is None or type(t) in _PLAIN_TENSOR_TYPES for t in others)


@functools.cache  # called on every call: no import statement on the hot path
def _fwd_impl(device_type: str):
    if device_type == "cuda":
        from .kernels.forward import norm_gated_fwd_triton

        return norm_gated_fwd_triton
    return norm_gated_fwd_native


@functools.cache
def _bwd_impl(device_type: str):
    if device_type == "cuda":
        from .kernels.backward import norm_gated_bwd_triton

        return norm_gated_bwd_triton
    return norm_gated_bwd_native


def _bwd_direct_or_op(dy, x, weight, bias, z, mean, rstd, *flags_and_mask):
    # grad mode is on in a backward only under create_graph=True: the op then records its (raising) autograd
    direct = not torch.is_grad_enabled() and direct_call_ok(dy, x, weight, bias, z)
    bwd = _bwd_impl(x.device.type) if direct else ops.bwd
    return bwd(dy, x, weight, bias, z, mean, rstd, *flags_and_mask)


class NormGatedFunction(torch.autograd.Function):
    """``norm_gated::fwd`` with the op's autograd (same saved tensors, same backward), minus the dispatcher."""

    # ctx-style forward, not a separate setup_context: apply() binds a setup_context Function's arguments
    # with inspect.signature on every call, which costs more than the whole call at decode shapes
    @staticmethod
    def forward(ctx, *inputs):
        x = inputs[0]
        output = _fwd_impl(x.device.type)(*inputs)
        ops.fwd_setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, dout, dmean, drstd):
        return ops.fwd_backward_through(_bwd_direct_or_op, ctx, dout)


# autograd.Function.apply's own base (the C++ apply), bound to NormGatedFunction
_FUNCTION_APPLY = super(torch.autograd.Function, NormGatedFunction).apply


def _apply_with_grad(x, weight, bias, z, *flags):
    """``NormGatedFunction.apply`` minus its Python wrapper (~2 µs a call): the wrapper binds arguments only
    for Functions with a setup_context (this one has none), and direct calls never run under a functorch
    transform; what is left of it, unwrapping dead functorch wrappers, is done here on the tensors."""
    return _FUNCTION_APPLY(unwrap_if_dead(x), None if weight is None else unwrap_if_dead(weight),
                           None if bias is None else unwrap_if_dead(bias), None if z is None else unwrap_if_dead(z),
                           *flags)


def norm_gated_fwd(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    z: torch.Tensor | None,
    eps: float,
    group_size: int | None,
    norm_before_gate: bool,
    is_rms_norm: bool,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.ops.norm_gated.fwd(...)``, directly where that is indistinguishable from the op."""
    args = (x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm, activation)
    if not (isinstance(x, torch.Tensor) and direct_call_ok(x, weight, bias, z)):
        if torch.compiler.is_compiling():
            validate(x, weight, bias, z, eps, group_size, activation)
        return ops.fwd(*args)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, z)):
        return _apply_with_grad(*args)
    return _fwd_impl(x.device.type)(*args)


def norm_gated_fwd_out(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    z: torch.Tensor | None,
    out: torch.Tensor,
    eps: float,
    group_size: int | None,
    norm_before_gate: bool,
    is_rms_norm: bool,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.norm_gated.fwd_out(...)``, directly where that is indistinguishable from the op."""
    if not (isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor) and direct_call_ok(x, weight, bias, z, out)):
        if torch.compiler.is_compiling():
            validate(x, weight, bias, z, eps, group_size, activation)
            validate_out_metadata(out, x)  # the op's fake kernel checks the rest
        return ops.fwd_out(x, weight, bias, z, out, eps, group_size, norm_before_gate, is_rms_norm, activation)
    _, mean, rstd = _fwd_impl(x.device.type)(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm,
                                             activation, out=out)
    torch.autograd.graph.increment_version(out)  # as the op's in-place bookkeeping does; kernels write raw memory
    return mean, rstd
