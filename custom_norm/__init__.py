"""custom_norm: the gated LayerNorm/RMSNorm of Mamba2-style models as a first-class PyTorch operator.

Importing the package registers ``torch.ops.norm_gated.fwd``.
"""

# isort: off
from . import ops  # registers the op first: the modules below refer to it
from . import inductor  # noqa: F401  (registers Inductor's lowering of the op)
# isort: on
from .functional import layernorm_fn, rmsnorm_fn
from .modules import LayerNormGated, RMSNormGated
from .reference import norm_gated_reference

__all__ = ["LayerNormGated", "RMSNormGated", "layernorm_fn", "norm_gated_reference", "ops", "rmsnorm_fn"]
__version__ = "0.1.0"
