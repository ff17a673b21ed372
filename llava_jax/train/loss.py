"""Token cross-entropy over supervised tokens without materialising [B, T, V] float32 logits.

Letters: B batch, T length, C chunk, D width, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def shifted_targets(labels, segment_ids=None):
    """Next-token targets int32[B, T-1] (-100 where unsupervised or across a packed-sample boundary)."""
    targets = labels[:, 1:]
    if segment_ids is not None:
        same = segment_ids[:, 1:] == segment_ids[:, :-1]
        targets = jnp.where(same, targets, IGNORE_INDEX)
    return targets


def chunked_cross_entropy(hidden, targets, head_fn, chunk: int = 512):
    """Summed token NLL and the number of supervised tokens.

    Args:
      hidden: float[B, T, D] hidden states whose logits predict `targets`.
      targets: int32[B, T] target ids, -100 = ignore.
      head_fn: float[B, C, D] -> float32[B, C, V] (the LM head).
      chunk: tokens per chunk; logits of one chunk exist at a time, in the
        backward pass too (the chunk body is rematerialised).
    Returns:
      (float32[] sum of -log p(target), int32[] count of supervised tokens).
    """
    if chunk < 1:
        raise ValueError(f"loss chunk must be at least 1 token (config `loss_chunk`), got {chunk}")
    b, t, d = hidden.shape
    chunk = min(chunk, t)
    pad = (-t) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
    n = hidden.shape[1] // chunk
    hs = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)
    ts = targets.reshape(b, n, chunk).swapaxes(0, 1)

    def chunk_nll(h, tgt):
        logits = head_fn(h).astype(jnp.float32)
        valid = tgt != IGNORE_INDEX
        safe = jnp.where(valid, tgt, 0)
        picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
        nll = jax.nn.logsumexp(logits, axis=-1) - picked
        return jnp.sum(jnp.where(valid, nll, 0.0))

    if n == 1:  # one chunk: nothing to save by rematerialising the logits
        return chunk_nll(hs[0], ts[0]), jnp.sum(targets != IGNORE_INDEX).astype(jnp.int32)
    chunk_nll = jax.checkpoint(chunk_nll)

    def body(total, xs):
        return total + chunk_nll(*xs), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (hs, ts))
    return total, jnp.sum(targets != IGNORE_INDEX).astype(jnp.int32)
