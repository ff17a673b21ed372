"""Attention kernels behind one dispatch (`attention`) with a pure-JAX reference."""

from llava_jax.kernels.attention import (
    IMPLS,
    UnsupportedAttention,
    attention,
    build_mask,
    masked_attention,
    reference_attention,
)

__all__ = ["IMPLS", "UnsupportedAttention", "attention", "build_mask", "masked_attention",
           "reference_attention"]
