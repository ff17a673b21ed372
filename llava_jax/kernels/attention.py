"""One attention entry point over several implementations, with a pure-JAX reference.

Letters: B batch, T query length, S key length, N query heads, K key/value
heads (N a multiple of K), G = N // K, H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLS = ("xla", "cudnn", "pallas_gpu", "splash", "auto")
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


class UnsupportedAttention(ValueError):
    """The requested attention implementation cannot compute this call."""


def build_mask(batch: int, t: int, s: int, *, causal: bool, segment_ids=None, kv_segment_ids=None,
               padding_mask=None):
    """bool[B, T, S] (or None when nothing is masked): True where query t may attend key s.

    Causal masking is aligned to the end (query t sees keys s <= t + S - T).
    """
    mask = None
    if causal:
        q_idx = jnp.arange(t)[:, None] + (s - t)
        mask = (jnp.arange(s)[None, :] <= q_idx)[None]
    if segment_ids is not None:
        kv_seg = segment_ids if kv_segment_ids is None else kv_segment_ids
        seg = segment_ids[:, :, None] == kv_seg[:, None, :]
        mask = seg if mask is None else mask & seg
    if padding_mask is not None:
        pad = padding_mask.astype(bool)[:, None, :]
        mask = pad if mask is None else mask & pad
    if mask is not None:
        mask = jnp.broadcast_to(mask, (batch, t, s))
    return mask


def masked_attention(q, k, v, mask=None, *, scale=None):
    """Reference attention with an explicit mask.

    Args:
      q: float[B, T, N, H]; k, v: float[B, S, K, H].
      mask: bool[B, T, S] or None (all visible).
      scale: logit scale, default H ** -0.5.
    Returns:
      float[B, T, N, H] in q's dtype; rows whose mask is all False are 0.
    """
    b, t, n, h = q.shape
    kh = k.shape[2]
    if n % kh:
        raise UnsupportedAttention(f"query heads {n} not a multiple of key/value heads {kh}")
    scale = h ** -0.5 if scale is None else scale
    qg = q.reshape(b, t, kh, n // kh, h)
    logits = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask[:, None, None], logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1)
    if mask is not None:
        probs = jnp.where(mask[:, None, None].any(-1, keepdims=True), probs, 0.0)
    out = jnp.einsum("bkgts,bskh->btkgh", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, n, h).astype(q.dtype)


def reference_attention(q, k, v, *, causal, segment_ids=None, kv_segment_ids=None, padding_mask=None,
                        scale=None):
    """Pure-JAX attention (the `xla` implementation); same arguments as `attention`."""
    mask = build_mask(q.shape[0], q.shape[1], k.shape[1], causal=causal, segment_ids=segment_ids,
                      kv_segment_ids=kv_segment_ids, padding_mask=padding_mask)
    return masked_attention(q, k, v, mask, scale=scale)


def attention(q, k, v, *, causal: bool, segment_ids=None, kv_segment_ids=None, padding_mask=None,
              scale=None, impl: str = "auto", interpret: bool | None = None):
    """Multi-head (grouped-query) attention through the chosen implementation.

    Args:
      q: float[B, T, N, H]; k, v: float[B, S, K, H] with N a multiple of K.
      causal: mask keys after the query (aligned to the end when T != S).
      segment_ids: int[B, T]; kv_segment_ids: int[B, S] (default segment_ids):
        queries attend only keys of the same segment (packed rows).
      padding_mask: bool[B, S], True for real keys.
      scale: logit scale, default H ** -0.5.
      impl: one of `xla`, `cudnn`, `pallas_gpu`, `splash`, `auto`.
      interpret: Pallas interpret mode (None: on CPU only).
    Returns:
      float[B, T, N, H].
    """
    if impl not in IMPLS:
        raise UnsupportedAttention(f"attention impl {impl!r} not in {IMPLS}")
    if impl in ("auto", "xla"):
        return reference_attention(q, k, v, causal=causal, segment_ids=segment_ids,
                                   kv_segment_ids=kv_segment_ids, padding_mask=padding_mask, scale=scale)
    raise UnsupportedAttention(f"attention impl {impl!r} is not available in this build")
