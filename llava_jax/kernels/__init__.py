"""Attention kernels behind one dispatch (`attention`) with a pure-JAX reference.

Kernel modules (`cudnn`, `pallas_gpu`, `splash`) are imported by the dispatch on first
use; `sharded` runs them per shard under a mesh; `masks` holds the dense-mask-free helpers they share.
"""

from llava_jax.kernels.attention import (
    ATTENTION_OUT,
    ATTENTION_STATS,
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
from llava_jax.kernels.sharded import AttentionAxes, KernelShardingWarning

__all__ = [
    "ATTENTION_OUT",
    "ATTENTION_STATS",
    "AUTO_ORDER",
    "AttentionAxes",
    "KernelShardingWarning",
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
