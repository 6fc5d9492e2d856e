"""custom_norm: the gated LayerNorm/RMSNorm of Mamba2-style models as a first-class PyTorch operator.

Importing the package registers ``torch.ops.norm_gated.fwd``.
"""

from . import ops
from .functional import layernorm_fn, rmsnorm_fn
from .modules import LayerNormGated, RMSNormGated
from .reference import norm_gated_reference

__all__ = ["LayerNormGated", "RMSNormGated", "layernorm_fn", "norm_gated_reference", "ops", "rmsnorm_fn"]
__version__ = "0.1.0"
