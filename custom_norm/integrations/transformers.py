"""Swap the gated-norm modules of Hugging Face transformers models for custom_norm's.

transformers is never imported here: its modules are recognised by class name and defining module
(``transformers.models.*``), so ``import custom_norm`` works without transformers installed.

What each recognised class computes, read from its ``forward`` (transformers 5.17 to 5.24); ``x`` is the
input, ``g`` the gate, ``rms(.)`` the RMS normalisation in float32 (per group where the class has groups):

========================  =====================================================  ======================
classes                   forward                                                our module
========================  =====================================================  ======================
Mamba2, Bamba,            ``w * rms(x * silu(g)).to(x.dtype)``; groups from      norm_before_gate=False,
Nemotron-H, Zamba2,       ``group_size`` (5.24; 5.17 has no groups: whole row)   silu, group_size
GraniteMoeHybrid
Falcon-H1                 ``norm_before_gate`` attribute picks ``rms(x) * w *    norm_before_gate from
                          silu(g)`` or ``rms(x * silu(g)) * w``, all float32;    the module, silu,
                          ``n_groups`` groups                                    N // n_groups
Qwen3-Next, Qwen3.5,      ``((w * rms(x).to(x.dtype)) * act(g)).to(x.dtype)``,   norm_before_gate=True,
Qwen3.5-MoE, OLMo-Hybrid, ``act`` from the ``activation`` attribute (silu;       activation from the
Qwen4-Exp                 configurable in Qwen4-Exp)                             module
Kimi-Linear,              ``(rms(x) * w.float() * act(g)).to(x.dtype)``, all     norm_before_gate=True,
Bailing-Hybrid,           float32; sigmoid (Kimi, Bailing, GLM-5-Next) or silu   activation from the
GLM-5-Next, Lara-Mini     (Lara-Mini)                                            module
========================  =====================================================  ======================

None of them uses a zero-centred ``1 + weight``. ``AXK2GatedRMSNorm`` is not a gated norm of this kind (its gate
is computed from the normalised output) and is left alone.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..functional import layernorm_fn
from ..modules import RMSNormGated

__all__ = ["TransformersRMSNormGated", "swap_gated_norms"]


@dataclass(frozen=True)
class _Family:
    """The semantics shared by a set of transformers classes."""

    norm_before_gate: bool | None  # None: read from the module's ``norm_before_gate`` attribute
    activation: str | None  # None: read from the module's ``activation`` attribute
    group_attr: str | None  # "group_size", "n_groups" (read if present; absent: one group) or None
    rounds_before_weight: bool  # forward rounds the normalised x to x's dtype, then multiplies by the weight


_MAMBA2 = _Family(norm_before_gate=False, activation="silu", group_attr="group_size", rounds_before_weight=True)
_FALCON_H1 = _Family(norm_before_gate=None, activation="silu", group_attr="n_groups", rounds_before_weight=False)
_QWEN3_NEXT = _Family(norm_before_gate=True, activation=None, group_attr=None, rounds_before_weight=True)
_FLA = _Family(norm_before_gate=True, activation=None, group_attr=None, rounds_before_weight=False)

#: transformers class name -> semantics. Only classes defined in a ``transformers.`` module match.
GATED_NORM_CLASSES: dict[str, _Family] = {
    "MambaRMSNormGated": _MAMBA2,
    "BambaRMSNormGated": _MAMBA2,
    "NemotronHRMSNormGated": _MAMBA2,
    "Zamba2RMSNormGated": _MAMBA2,
    "GraniteMoeHybridRMSNormGated": _MAMBA2,
    "FalconH1RMSNormGated": _FALCON_H1,
    "Qwen3NextRMSNormGated": _QWEN3_NEXT,
    "Qwen3_5RMSNormGated": _QWEN3_NEXT,
    "Qwen3_5MoeRMSNormGated": _QWEN3_NEXT,
    "OlmoHybridRMSNormGated": _QWEN3_NEXT,
    "Qwen4ExpTextRMSNormGated": _QWEN3_NEXT,
    "KimiLinearRMSNormGated": _FLA,
    "BailingHybridRMSNormGated": _FLA,
    "Glm5NextTextRMSNormGated": _FLA,
    "LaraMiniRMSNormGated": _FLA,
}

# Gated norms that are deliberately left alone, and why (no warning for these).
_NOT_EXPRESSIBLE = {
    "AXK2GatedRMSNorm": "its gate is computed from the normalised output (y * sigmoid(mlp(y)))",
}

_ACTIVATIONS = ("silu", "swish", "sigmoid")


class TransformersRMSNormGated(RMSNormGated):
    """custom_norm's ``RMSNormGated`` with the attribute names and call signature of transformers' classes.

    ``forward(hidden_states, gate=None)`` (positional or keyword, as the originals are called);
    ``variance_epsilon`` aliases ``eps`` and ``n_groups`` is derived from ``group_size``, because transformers'
    fused CUDA paths read ``norm.weight`` and ``norm.variance_epsilon``. The state dict holds ``weight`` only.

    ``round_before_weight=False`` (the default) computes the whole norm in one ``norm_gated::fwd`` call: the
    weight and the gate are applied in float32 and the output is rounded once to the input dtype, as the
    mamba_ssm and flash-linear-attention kernels do. ``round_before_weight=True`` reproduces the rounding
    steps of the eager transformers classes that round the normalised input to its dtype before multiplying
    by the weight: ``norm_gated::fwd`` without weight, then the weight (and, when the gate comes after the
    norm, the gate) applied outside the op, in the original's dtypes. Both are identical in float32.
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        group_size: int | None = None,
        norm_before_gate: bool = True,
        activation: str = "silu",
        round_before_weight: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(hidden_size, eps, group_size, norm_before_gate, activation, device=device, dtype=dtype)
        self.round_before_weight = round_before_weight

    @property
    def variance_epsilon(self) -> float:
        return self.eps

    @variance_epsilon.setter
    def variance_epsilon(self, value: float) -> None:
        self.eps = value

    @property
    def n_groups(self) -> int:
        return 1 if self.group_size is None else self.hidden_size // self.group_size

    def forward(self, hidden_states: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        if not self.round_before_weight:
            return layernorm_fn(hidden_states, self.weight, None, gate, self.eps, self.group_size,
                                self.norm_before_gate, True, self.activation)
        if not self.norm_before_gate:  # w * rms(x * act(g)).to(x.dtype)
            normed = layernorm_fn(hidden_states, None, None, gate, self.eps, self.group_size, False, True,
                                  self.activation)
            return self.weight * normed
        # ((w * rms(x).to(x.dtype)) * act(g.float())).to(x.dtype)
        normed = layernorm_fn(hidden_states, None, None, None, self.eps, self.group_size, True, True,
                              self.activation)
        out = self.weight * normed
        if gate is not None:
            g = gate.to(torch.float32)
            out = out * (torch.sigmoid(g) if self.activation == "sigmoid" else F.silu(g))
        return out.to(hidden_states.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", round_before_weight=True" if self.round_before_weight else "")


class _Skip(Exception):
    """A recognised module that cannot be swapped; the message says why."""


def _transformers_version() -> str:
    return getattr(sys.modules.get("transformers"), "__version__", "unknown")


def _family_of(module: nn.Module) -> _Family | None:
    cls = type(module)
    if not cls.__module__.startswith("transformers."):
        return None
    return GATED_NORM_CLASSES.get(cls.__name__)


def _looks_like_gated_norm(module: nn.Module) -> bool:
    cls = type(module)
    return (cls.__module__.startswith("transformers") and cls.__name__ not in _NOT_EXPRESSIBLE
            and cls.__name__.endswith(("NormGated", "GatedRMSNorm", "GatedNorm")))


def _replacement(module: nn.Module, family: _Family, exact_rounding: bool) -> TransformersRMSNormGated:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() != 1:
        raise _Skip("its weight is not a 1-D Parameter")
    if parametrize.is_parametrized(module):
        raise _Skip("it has parametrizations")
    if (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
            or module._backward_pre_hooks or hasattr(module, "_hf_hook")):
        raise _Skip("it has hooks (accelerate's, for instance): swap before adding hooks or dispatching the model")
    hidden_size = weight.shape[0]
    eps = float(module.variance_epsilon)
    activation = family.activation or getattr(module, "activation", None)
    if activation not in _ACTIVATIONS:
        raise _Skip(f"its activation {activation!r} is not one of {_ACTIVATIONS}")
    if family.norm_before_gate is None:
        norm_before_gate = bool(module.norm_before_gate)
    else:
        norm_before_gate = family.norm_before_gate
    group_size = None
    if family.group_attr == "group_size":
        group_size = getattr(module, "group_size", None)
    elif family.group_attr == "n_groups":
        n_groups = int(getattr(module, "n_groups", 1))
        if n_groups <= 0 or hidden_size % n_groups:
            raise _Skip(f"n_groups={n_groups} does not divide its size {hidden_size}")
        group_size = hidden_size // n_groups
    if group_size is not None:
        group_size = int(group_size)
        if group_size <= 0 or hidden_size % group_size:
            raise _Skip(f"group_size={group_size} does not divide its size {hidden_size}")
        if group_size == hidden_size:
            group_size = None
    new = TransformersRMSNormGated(
        hidden_size, eps, group_size, norm_before_gate, activation,
        round_before_weight=exact_rounding and family.rounds_before_weight, device="meta", dtype=weight.dtype,
    )
    new.weight = weight  # the same Parameter object: values, dtype, device, requires_grad, ties all kept
    new.train(module.training)
    return new


def _disagreement(original: nn.Module, new: nn.Module) -> str | None:
    """Run both modules on a small random input; return why they disagree, or None if they agree."""
    weight = original.weight
    if weight.device.type == "meta":
        return None
    gen = torch.Generator().manual_seed(0)  # private: leaves the global RNG untouched
    shape = (2, 3, weight.shape[0])
    x, z = (torch.randn(shape, generator=gen).to(device=weight.device, dtype=weight.dtype) for _ in range(2))
    try:
        with torch.no_grad():
            want, got = original(x, z), new(x, z)
    except Exception as e:  # noqa: BLE001
        return f"running it raised {type(e).__name__}: {e}"
    if want.shape != got.shape:
        return f"output shapes differ: {tuple(want.shape)} vs {tuple(got.shape)}"
    err = (got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-12)
    tol = 1e-4 if weight.dtype in (torch.float32, torch.float64) else 3e-2
    if not err <= tol:
        return f"outputs differ on a random input (relative error {float(err):.3g} > {tol})"
    return None


def swap_gated_norms(model: nn.Module, *, exact_rounding: bool = False, verify: bool = True) -> int:
    """Replace every transformers gated-norm module inside ``model`` with custom_norm's; return how many.

    Each replacement is a :class:`TransformersRMSNormGated` (a ``custom_norm.RMSNormGated``) holding the
    original's weight Parameter itself (same values, dtype, device), its eps, group size, norm/gate order and
    activation, so the model's state-dict keys do not change. Modules shared between several parents stay
    shared. Only the submodules of ``model`` are replaced, not ``model`` itself.

    ``exact_rounding``: see :class:`TransformersRMSNormGated`; False (default) runs one fused op per norm, whose
    output can differ from the eager transformers classes by one rounding in float16/bfloat16 (identical in
    float32); True reproduces their rounding steps.

    ``verify``: before replacing, run the original and the replacement on a small random input on the
    module's device and dtype (with a private generator) and keep the original, with a warning, if they
    disagree, so that a transformers version whose class changed semantics is never swapped silently.

    Recognised classes that cannot be expressed (an unsupported activation, hooks, parametrizations) are
    left in place with a warning, as are unknown transformers classes whose name says gated norm.
    """
    if _family_of(model) is not None:
        warnings.warn("swap_gated_norms replaces submodules: pass the module that contains the gated norm",
                      stacklevel=2)
    replaced: dict[int, nn.Module] = {}
    kept: set[int] = set()
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is None or id(child) in kept:
                continue
            if id(child) in replaced:
                parent._modules[name] = replaced[id(child)]
                continue
            family = _family_of(child)
            reason = None
            if family is None:
                if _looks_like_gated_norm(child):
                    reason = "custom_norm does not know this class"
            else:
                try:
                    new = _replacement(child, family, exact_rounding)
                except _Skip as e:
                    reason = str(e)
                except AttributeError as e:  # a class of that name without the attributes its forward reads
                    reason = f"it lacks an attribute ({e})"
                else:
                    reason = _disagreement(child, new) if verify else None
            if reason is None and family is not None:
                replaced[id(child)] = new
                parent._modules[name] = new
            elif reason is not None:
                kept.add(id(child))
                cls = type(child)
                warnings.warn(f"swap_gated_norms left {cls.__module__}.{cls.__qualname__} unchanged "
                              f"(transformers {_transformers_version()}): {reason}", stacklevel=2)
    return len(replaced)
