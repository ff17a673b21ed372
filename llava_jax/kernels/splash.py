"""TPU splash attention (jax.experimental.pallas.ops.tpu.splash_attention) behind our API.

Causal masking is the kernel's static mask (it skips masked tiles); segment ids and
key padding go in as its dynamic segment ids, never as a dense mask. Splash works on
one example with head-major arrays, so it is vmapped over the batch.

Letters: B batch, T query length, S key length, N query heads, K key/value heads,
H head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llava_jax.kernels import masks

DTYPES = (jnp.float32, jnp.bfloat16)
_LANES = 128  # splash tiles are multiples of the TPU lane width


def unsupported(q, k, v, *, causal: bool, backend: str, interpret: bool | None) -> str | None:
    """Why splash cannot run these inputs (None when it can)."""
    if backend != "tpu" and not (interpret or (interpret is None and backend == "cpu")):
        return f"splash attention needs a TPU or interpret mode, backend is {backend!r}"
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtypes {q.dtype}/{k.dtype}/{v.dtype}; needs float32 or bfloat16"
    if causal and q.shape[1] > k.shape[1]:
        # End-aligned causal masking would leave the first T - S rows without any key,
        # which splash cannot express (its softmax needs one key per row).
        return f"causal with more queries ({q.shape[1]}) than keys ({k.shape[1]})"
    return None


def _block(length: int) -> int:
    """Largest tile in (512, 256, 128) dividing `length` (a multiple of 128)."""
    for blk in (512, 256, 128):
        if length % blk == 0:
            return blk
    raise AssertionError(length)


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, tp: int, sp: int, causal: bool, offset: int, interpret: bool):
    """A splash kernel for one example: q float[N, Tp, H], k/v float[K, Sp, H]."""
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    if causal:
        head_mask = sa.CausalMask((tp, sp), offset=offset)
    else:
        head_mask = sa.FullMask((tp, sp))
    bq, bk = _block(tp), _block(sp)
    blocks = sa.BlockSizes(
        block_q=bq,
        block_kv=bk,
        block_kv_compute=bk,
        block_q_dkv=bq,
        block_kv_dkv=bk,
        block_kv_dkv_compute=bk,
        block_q_dq=bq,
        block_kv_dq=bk,
    )
    # The kernel holds its tile tables as arrays; making them concrete (not tracers of
    # whichever jit first called us) is what lets the cache serve every later trace.
    # Interpret mode goes in as TPU InterpretParams rather than a context manager, so
    # the backward kernels, traced later by autodiff, are interpreted too.
    with jax.ensure_compile_time_eval():
        return sa.make_splash_mha(
            sa.MultiHeadMask([head_mask] * heads),
            block_sizes=blocks,
            head_shards=1,
            q_seq_shards=1,
            interpret=pltpu.InterpretParams() if interpret else False,
        )


def attention(
    q,
    k,
    v,
    *,
    causal: bool,
    segment_ids=None,
    kv_segment_ids=None,
    padding_mask=None,
    scale=None,
    interpret: bool | None = None,
):
    """Splash attention; arguments as `llava_jax.kernels.attention`.

    Args:
      q: float[B, T, N, H]; k, v: float[B, S, K, H].
      interpret: run the Mosaic kernels in TPU interpret mode (None: on CPU only).
    Returns:
      float[B, T, N, H]; rows that see no key are 0.
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b, t, n, h = q.shape
    s = k.shape[1]
    scale = h**-0.5 if scale is None else scale
    interpret = jax.default_backend() == "cpu" if interpret is None else bool(interpret)
    q_seg, kv_seg = masks.fold_segments(segment_ids, kv_segment_ids, padding_mask, t=t, s=s)
    has_keys = masks.rows_with_keys(q_seg, kv_seg, t=t, s=s, causal=causal)

    tp, sp = masks.round_up(t, _LANES), masks.round_up(s, _LANES)
    if sp != s and q_seg is None:
        q_seg = jnp.zeros((b, t), jnp.int32)
        kv_seg = jnp.zeros((b, s), jnp.int32)
    if q_seg is not None:
        # Padded keys get an id no real query has; padded queries share it, so every
        # padded row still has a key and stays finite (its output is dropped).
        sentinel = jnp.minimum(q_seg.min(), kv_seg.min()) - 1
        q_seg = masks.pad_axis(q_seg, tp, 1, sentinel)
        kv_seg = masks.pad_axis(kv_seg, sp, 1, sentinel)

    # Splash has no scale argument: scale q in float32 and round once.
    q_scaled = (q.astype(jnp.float32) * scale).astype(q.dtype)
    qh = masks.pad_axis(jnp.swapaxes(q_scaled, 1, 2), tp, 2)
    kh = masks.pad_axis(jnp.swapaxes(k, 1, 2), sp, 2)
    vh = masks.pad_axis(jnp.swapaxes(v, 1, 2), sp, 2)
    kernel = _kernel(n, tp, sp, causal, s - t, interpret)

    def one(qi, ki, vi, qs, ks):
        seg = None if qs is None else sa.SegmentIds(q=qs, kv=ks)
        return kernel(qi, ki, vi, segment_ids=seg)

    if interpret and b > 1:
        # TPU interpret mode (jax 0.10) rejects the extra grid axis vmap adds to a kernel
        # with dimension semantics; a sequential map is the same computation.
        out = jax.lax.map(lambda a: one(*a), (qh, kh, vh, q_seg, kv_seg))
    else:
        out = jax.vmap(one)(qh, kh, vh, q_seg, kv_seg)
    out = jnp.swapaxes(out[:, :, :t], 1, 2).astype(q.dtype)
    if has_keys is not None:
        # Splash averages the masked keys of an empty row; the reference returns 0.
        out = jnp.where(has_keys[:, :, None, None], out, 0)
    return out
