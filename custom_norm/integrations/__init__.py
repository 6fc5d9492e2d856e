"""Integrations with other libraries. None of them imports its library at import time."""

from .transformers import TransformersRMSNormGated, swap_gated_norms

__all__ = ["TransformersRMSNormGated", "swap_gated_norms"]
