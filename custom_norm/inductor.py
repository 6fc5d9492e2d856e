"""Inductor integration: outside CUDA, Inductor lowers ``norm_gated::fwd`` to its plain math.

The decomposition is registered in Inductor's own table only, so ``torch.export`` and the other backends keep
the op as one node; Inductor then fuses the norm with its neighbours on CPU and other devices, as it would
the plain PyTorch expression. On CUDA the decomposition declines (returns NotImplemented) and the Triton
kernel runs as an opaque call, through a fallback lowering registered here: Inductor refuses to create an
implicit fallback for an op that also has a decomposition.

``norm_gated::fwd_out`` needs nothing here: functionalization wraps a mutating op in ``auto_functionalized``
before any decomposition would see it, and Inductor turns that back into an in-place call of the op on the
caller's tensor through the implicit fallback, which an op without a decomposition gets on every device.
It thus runs as an opaque kernel (native on CPU, Triton on CUDA) and is not fused with its neighbours.
"""

from __future__ import annotations

import torch
from torch._inductor.decomposition import register_decomposition
from torch._inductor.lowering import make_fallback, tag_to_layout_constraint
from torch._library.utils import get_layout_constraint_tag

from .reference import norm_gated_bwd_reference, norm_gated_reference


@register_decomposition(torch.ops.norm_gated.fwd.default)
def _fwd_decomposition(x, weight, bias, z, eps=1e-6, group_size=None, norm_before_gate=True, is_rms_norm=False,
                       activation="silu"):
    if x.device.type == "cuda":
        return NotImplemented
    return norm_gated_reference(x, weight, bias, z, eps, group_size, norm_before_gate, is_rms_norm, activation)


@register_decomposition(torch.ops.norm_gated.bwd.default)
def _bwd_decomposition(dy, x, weight, bias, z, mean, rstd, group_size, norm_before_gate, is_rms_norm, activation,
                       output_mask):
    if x.device.type == "cuda":
        return NotImplemented
    return norm_gated_bwd_reference(dy, x, weight, bias, z, mean, rstd, group_size, norm_before_gate, is_rms_norm,
                                    activation, output_mask)


for _op in (torch.ops.norm_gated.fwd.default, torch.ops.norm_gated.bwd.default):
    # the layout constraint Inductor would give an implicit fallback of a custom op
    make_fallback(_op, layout_constraint=tag_to_layout_constraint(get_layout_constraint_tag(_op)),
                  override_decomp=True)
