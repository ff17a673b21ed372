"""Mask bookkeeping shared by the kernel wrappers, all in O(T + S) memory per row.

The kernels never see a dense mask: padding is folded into key segment ids, and the
few facts a wrapper needs about the mask (does a query row see any key at all?) are
computed from the ids with sorting instead of a [T, S] comparison.

Letters: B batch, T query length, S key length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def fold_segments(segment_ids, kv_segment_ids, padding_mask, *, t: int, s: int):
    """Segment ids with key padding folded in, or (None, None) when nothing is masked.

    Args:
      segment_ids: int[B, T] or None.
      kv_segment_ids: int[B, S] or None (default: segment_ids, which needs T == S).
      padding_mask: bool[B, S] or None, True for real keys.
      t, s: query and key lengths.
    Returns:
      (q_seg int32[B, T], kv_seg int32[B, S]): a query sees a key iff their ids are equal.
      Padded keys carry `min(q_seg) - 1`, an id no query in that row has.
    """
    if segment_ids is None and kv_segment_ids is None and padding_mask is None:
        return None, None
    if segment_ids is None and kv_segment_ids is not None:
        raise ValueError("kv_segment_ids needs segment_ids for the queries")
    if segment_ids is None:
        b = padding_mask.shape[0]
        q_seg = jnp.zeros((b, t), jnp.int32)
        kv_seg = jnp.zeros((b, s), jnp.int32)
    else:
        q_seg = segment_ids.astype(jnp.int32)
        kv_seg = q_seg if kv_segment_ids is None else kv_segment_ids.astype(jnp.int32)
        if kv_seg.shape[1] != s:
            raise ValueError(f"kv segment ids have length {kv_seg.shape[1]}, keys {s}")
    if padding_mask is not None:
        sentinel = jnp.min(q_seg, axis=1, keepdims=True) - 1
        kv_seg = jnp.where(padding_mask.astype(bool), kv_seg, sentinel)
    return q_seg, kv_seg


def rows_with_keys(q_seg, kv_seg, *, t: int, s: int, causal: bool):
    """bool[B, T] (or None if every row sees a key): query t sees at least one key.

    Kernels that cannot represent an empty softmax row (splash averages the masked
    keys instead) zero those rows with this, to match `masked_attention`. Causal is
    aligned to the end: query t sees keys s' <= t + S - T.
    """
    offset = s - t
    if q_seg is None:
        if causal and offset < 0:
            return jnp.arange(t)[None] + offset >= 0
        return None
    # The first key of each segment, by a stable sort: a row has a key iff its segment
    # occurs among the keys (at or before its causal limit).
    order = jnp.argsort(kv_seg, axis=1, stable=True)
    sorted_seg = jnp.take_along_axis(kv_seg, order, axis=1)
    first = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="left"))(sorted_seg, q_seg)
    first = jnp.minimum(first, s - 1)
    found = jnp.take_along_axis(sorted_seg, first, axis=1) == q_seg
    if causal:
        first_pos = jnp.take_along_axis(order, first, axis=1)
        found &= first_pos <= jnp.arange(t)[None] + offset
    return found


def pad_axis(x, length: int, axis: int, value=0):
    """x padded with `value` at the end of `axis` up to `length`."""
    extra = length - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def round_up(x: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= x."""
    return -(-x // multiple) * multiple


def next_power_of_2(x: int) -> int:
    """Smallest power of two >= x (1 for x <= 1)."""
    return 1 if x <= 1 else 1 << (x - 1).bit_length()
