"""``nn.Module`` wrappers with the original modules' constructor arguments and state-dict keys."""

from __future__ import annotations

import torch
from torch import nn

from .functional import layernorm_fn


class LayerNormGated(nn.Module):
    """Gated LayerNorm with ``weight`` (ones) and ``bias`` (zeros) over groups of ``group_size`` columns."""

    is_rms_norm = False

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = True,
        activation: str = "silu",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.hidden_size = hidden_size
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(hidden_size, **factory))
        if self.is_rms_norm:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(hidden_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return layernorm_fn(
            x, self.weight, self.bias, z, self.eps, self.group_size, self.norm_before_gate, self.is_rms_norm,
            self.activation,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.hidden_size}, eps={self.eps}, group_size={self.group_size}, "
            f"norm_before_gate={self.norm_before_gate}, activation={self.activation!r}"
        )


class RMSNormGated(LayerNormGated):
    """Gated RMSNorm with ``weight`` (ones) only; ``bias`` is registered as None."""

    is_rms_norm = True
