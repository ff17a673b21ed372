"""Attention kernels behind one dispatch (`attention`) with a pure-JAX reference.

Kernel modules (`cudnn`, `pallas_gpu`, `splash`) are imported by the dispatch on first
use; `masks` holds the dense-mask-free helpers they share.
"""

from llava_jax.kernels.attention import (
    AUTO_ORDER,
    IMPLS,
    UnsupportedAttention,
    attention,
    build_mask,
    heads_first_attention,
    masked_attention,
    reference_attention,
    select_impl,
    unsupported_reason,
)

__all__ = [
    "AUTO_ORDER",
    "IMPLS",
    "UnsupportedAttention",
    "attention",
    "build_mask",
    "heads_first_attention",
    "masked_attention",
    "reference_attention",
    "select_impl",
    "unsupported_reason",
]
