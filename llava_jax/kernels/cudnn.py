"""cuDNN fused attention through `jax.nn.dot_product_attention(implementation="cudnn")`.

That API expresses masks as sequence lengths or as a dense [B, N, T, S] bias, so this
path takes causal and unmasked attention only: segment ids or a general padding mask
would need the dense mask this project avoids, and `auto` sends those to a Pallas kernel.

Letters: B batch, T query length, S key length, N query heads, K key/value heads,
H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DTYPES = (jnp.bfloat16, jnp.float16)


def _is_cuda() -> bool:
    # backend "gpu" also covers ROCm, which has no cuDNN.
    try:
        return "rocm" not in str(jax.devices()[0].client.platform_version).lower()
    except (AttributeError, IndexError, RuntimeError):
        return True


def _max_head_dim() -> int:
    # cuDNN flash attention takes H <= 256 from Hopper on, H <= 128 before.
    try:
        major = int(str(jax.devices()[0].compute_capability).split(".")[0])
    except (AttributeError, ValueError, IndexError):
        return 128
    return 256 if major >= 9 else 128


def unsupported(q, k, v, *, causal: bool, segment_ids, kv_segment_ids, padding_mask, backend: str) -> str | None:
    """Why cuDNN cannot run these inputs (None when it can)."""
    if backend != "gpu":
        return f"cuDNN attention needs a GPU, backend is {backend!r}"
    if not _is_cuda():
        return "cuDNN attention needs an NVIDIA GPU (this is ROCm)"
    if segment_ids is not None or kv_segment_ids is not None:
        return "segment ids would need a dense [B, N, T, S] mask through jax.nn"
    if padding_mask is not None:
        return "a bool[B, S] padding mask would need a dense mask (cuDNN takes lengths only)"
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtypes {q.dtype}/{k.dtype}/{v.dtype}; needs bfloat16 or float16"
    h = q.shape[-1]
    if h % 8 or h > _max_head_dim():
        return f"head_dim {h} must be a multiple of 8 and <= {_max_head_dim()}"
    if causal and q.shape[1] != k.shape[1]:
        # cuDNN aligns its causal mask to the top-left; ours is aligned to the end.
        return f"causal needs T == S, got T={q.shape[1]}, S={k.shape[1]}"
    return None


def attention(q, k, v, *, causal: bool, scale=None):
    """cuDNN flash attention.

    Args:
      q: bfloat16[B, T, N, H]; k, v: bfloat16[B, S, K, H] (or float16).
    Returns:
      bfloat16[B, T, N, H].
    """
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal, implementation="cudnn")
