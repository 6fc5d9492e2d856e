"""custom_norm: the gated LayerNorm/RMSNorm of Mamba2-style models as a first-class PyTorch operator.

Importing the package registers ``torch.ops.norm_gated.fwd`` (and ``fwd_out``, ``bwd``).
"""

# isort: off
from . import ops  # registers the op first: the modules below refer to it
from . import inductor  # noqa: F401  (registers Inductor's lowering of the op)
# isort: on
from .functional import layer_norm_fwd, layernorm_fn, rmsnorm_fn
from .integrations.transformers import swap_gated_norms
from .modules import LayerNormGated, RMSNormGated
from .reference import norm_gated_reference

# The names mamba_ssm (mamba_ssm.ops.triton.layernorm_gated) gives these modules.
LayerNorm = LayerNormGated
RMSNorm = RMSNormGated

__all__ = [
    "LayerNorm", "LayerNormGated", "RMSNorm", "RMSNormGated", "layer_norm_fwd", "layernorm_fn",
    "norm_gated_reference", "ops", "rmsnorm_fn", "swap_gated_norms",
]
__version__ = "0.1.0"
