"""Flash attention in Pallas (Triton backend): causal, segment and padding masks, GQA.

Forward and backward (dq, dk, dv) are Pallas kernels tied by `jax.custom_vjp`. No
dense mask exists anywhere: each kernel rebuilds its [block_q, block_k] tile of the
mask from positions and segment ids, and skips tiles that are fully masked using
per-block key ranges computed in plain JAX from [B, T / block] summaries.

Letters: B batch, T query length, S key length, N query heads, K key/value heads,
G = N // K, H head dim. Sequences are padded to whole blocks here, so any T and S work.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from llava_jax.kernels import masks
from llava_jax.kernels.attention import ATTENTION_OUT, ATTENTION_STATS

# Finite stand-ins for -inf: masked logits are _MASK; the running max starts at
# _M_FLOOR, far above _MASK and far below any real logit, so exp2(_MASK - m) is exactly
# 0 and a row that has seen only masked keys keeps l == 0 (output 0, like the reference).
_MASK = -0.7 * float(jnp.finfo(jnp.float32).max)
_M_FLOOR = -1e30
# Log-sum-exp stored for rows without any visible key: exp2(s - _LSE_EMPTY) == 0.
_LSE_EMPTY = 1e30
_LOG2E = math.log2(math.e)

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (powers of two, >= 16) for the forward, dq and dk/dv kernels."""

    block_q: int = 128
    block_k: int = 64
    block_q_dq: int = 64
    block_k_dq: int = 64
    block_q_dkv: int = 64
    block_k_dkv: int = 64
    num_warps: int | None = None
    num_stages: int = 2


DEFAULT_BLOCKS = BlockSizes()


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static description of one call (hashable: it is a custom_vjp nondiff argument)."""

    causal: bool
    scale: float
    t: int  # real lengths; the arrays are padded to tp, sp
    s: int
    tp: int
    sp: int
    has_seg: bool
    blocks: BlockSizes
    interpret: bool

    @property
    def offset(self) -> int:
        return self.s - self.t


def unsupported(q, k, v, *, backend: str, interpret: bool | None) -> str | None:
    """Why this kernel cannot run these inputs (None when it can)."""
    if backend != "gpu" and not (interpret or (interpret is None and backend == "cpu")):
        return f"Pallas GPU kernels need a GPU or interpret mode, backend is {backend!r}"
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtypes {q.dtype}/{k.dtype}/{v.dtype}; needs one of float32, bfloat16, float16"
    if q.shape[-1] > 256:
        return f"head_dim {q.shape[-1]} > 256 does not fit the tiles in registers"
    return None


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
    block_sizes: BlockSizes | None = None,
):
    """Flash attention; arguments as `llava_jax.kernels.attention`.

    Args:
      q: float[B, T, N, H]; k, v: float[B, S, K, H].
      block_sizes: tiles; default `DEFAULT_BLOCKS`, clipped to the sequence lengths.
    Returns:
      float[B, T, N, H]; rows that see no key are 0.
    """
    b, t, _, h = q.shape
    s = k.shape[1]
    scale = h**-0.5 if scale is None else float(scale)
    interpret = jax.default_backend() == "cpu" if interpret is None else bool(interpret)
    q_seg, kv_seg = masks.fold_segments(segment_ids, kv_segment_ids, padding_mask, t=t, s=s)

    blocks = _clip_blocks(block_sizes or DEFAULT_BLOCKS, t, s)
    tp = masks.round_up(t, max(blocks.block_q, blocks.block_q_dq, blocks.block_q_dkv))
    sp = masks.round_up(s, max(blocks.block_k, blocks.block_k_dq, blocks.block_k_dkv))
    # Triton tiles need power-of-two extents; zero head-dim columns change no logit.
    hp = max(16, masks.next_power_of_2(h))
    cfg = _Config(
        causal=causal,
        scale=scale,
        t=t,
        s=s,
        tp=tp,
        sp=sp,
        has_seg=q_seg is not None,
        blocks=blocks,
        interpret=interpret,
    )

    q_p = masks.pad_axis(masks.pad_axis(q, tp, 1), hp, 3)
    k_p = masks.pad_axis(masks.pad_axis(k, sp, 1), hp, 3)
    v_p = masks.pad_axis(masks.pad_axis(v, sp, 1), hp, 3)
    if q_seg is not None:
        q_seg = masks.pad_axis(q_seg, tp, 1)
        kv_seg = masks.pad_axis(kv_seg, sp, 1)
    ranges = _all_ranges(q_seg, kv_seg, cfg, b)
    out = _flash(q_p, k_p, v_p, q_seg, kv_seg, ranges, cfg)
    return out[:, :t, :, :h]


def _clip_blocks(bs: BlockSizes, t: int, s: int) -> BlockSizes:
    """Blocks no larger than the (power-of-two rounded) sequence, and at least 16."""
    tq = max(16, masks.next_power_of_2(t))
    tk = max(16, masks.next_power_of_2(s))
    return dataclasses.replace(
        bs,
        block_q=min(bs.block_q, tq),
        block_k=min(bs.block_k, tk),
        block_q_dq=min(bs.block_q_dq, tq),
        block_k_dq=min(bs.block_k_dq, tk),
        block_q_dkv=min(bs.block_q_dkv, tq),
        block_k_dkv=min(bs.block_k_dkv, tk),
    )


# ----------------------------------------------------------------------------------------
# Which tiles to visit: plain JAX on [B, T / block_q, S / block_k] block summaries.


def _block_pairs(q_seg, kv_seg, cfg: _Config, batch: int, bq: int, bk: int):
    """(visible, full): bool[B, nq, nk] per (query block, key block).

    visible: some pair in the tile may be unmasked (conservative: segment id ranges
    overlap). full: every pair in the tile is unmasked, so the kernel may skip masking.
    """
    nq, nk = cfg.tp // bq, cfg.sp // bk
    qi = jnp.arange(nq)[:, None]
    kj = jnp.arange(nk)[None, :]
    visible = (qi * bq < cfg.t) & (kj * bk < cfg.s)
    full = ((qi + 1) * bq <= cfg.t) & ((kj + 1) * bk <= cfg.s)
    if cfg.causal:
        visible &= kj * bk <= (qi + 1) * bq - 1 + cfg.offset
        full &= (kj + 1) * bk - 1 <= qi * bq + cfg.offset
    visible = jnp.broadcast_to(visible, (batch, nq, nk))
    full = jnp.broadcast_to(full, (batch, nq, nk))
    if q_seg is not None:
        big, small = jnp.iinfo(jnp.int32).max, jnp.iinfo(jnp.int32).min

        def summary(seg, length, blk):
            real = jnp.arange(seg.shape[1]) < length
            lo = jnp.where(real, seg, big).reshape(batch, -1, blk).min(-1)
            hi = jnp.where(real, seg, small).reshape(batch, -1, blk).max(-1)
            return lo, hi

        qmin, qmax = summary(q_seg, cfg.t, bq)
        kmin, kmax = summary(kv_seg, cfg.s, bk)
        visible &= (qmin[:, :, None] <= kmax[:, None, :]) & (kmin[:, None, :] <= qmax[:, :, None])
        full &= (qmin == qmax)[:, :, None] & (kmin == kmax)[:, None, :] & (qmin[:, :, None] == kmin[:, None, :])
    return visible, full & visible


def _run_bounds(visible, full):
    """int32[..., 4] (lo, ulo, uhi, hi) along the last axis.

    Visit [lo, hi) (all visible tiles lie inside); [ulo, uhi) is a run of full tiles
    inside it that needs no masking. Empty rows get lo == hi == 0.
    """
    n = visible.shape[-1]
    idx = jnp.arange(n)
    any_vis = visible.any(-1)
    lo = jnp.where(any_vis, jnp.argmax(visible, -1), 0)
    hi = jnp.where(any_vis, n - jnp.argmax(visible[..., ::-1], -1), 0)
    any_full = full.any(-1)
    ulo = jnp.where(any_full, jnp.argmax(full, -1), hi)
    after = (idx >= ulo[..., None]) & ~full
    uhi = jnp.where(after.any(-1), jnp.argmax(after, -1), n)
    uhi = jnp.where(any_full, jnp.minimum(uhi, hi), hi)
    return jnp.stack([lo, ulo, uhi, hi], -1).astype(jnp.int32)


def _all_ranges(q_seg, kv_seg, cfg: _Config, batch: int):
    """Tile ranges for the three kernels: ([B, nq, 4], [B, nq_dq, 4], [B, nk_dkv, 4])."""
    bs = cfg.blocks
    fwd = _run_bounds(*_block_pairs(q_seg, kv_seg, cfg, batch, bs.block_q, bs.block_k))
    dq = _run_bounds(*_block_pairs(q_seg, kv_seg, cfg, batch, bs.block_q_dq, bs.block_k_dq))
    vis, full = _block_pairs(q_seg, kv_seg, cfg, batch, bs.block_q_dkv, bs.block_k_dkv)
    dkv = _run_bounds(vis.swapaxes(1, 2), full.swapaxes(1, 2))
    return fwd, dq, dkv


# ----------------------------------------------------------------------------------------
# Kernels. Logits are kept in base 2 (scaled by log2 e) so the softmax uses exp2.


def _tile_mask(cfg: _Config, q_start, k_start, bq: int, bk: int, q_ids, k_ids):
    """bool[bq, bk]: which pairs of this tile are visible."""
    rows = q_start + jnp.arange(bq)[:, None]
    cols = k_start + jnp.arange(bk)[None, :]
    mask = jnp.ones((bq, bk), jnp.bool_)
    if cfg.causal:
        mask &= cols <= rows + cfg.offset
    if cfg.tp != cfg.t:  # padded query rows see nothing, so they never add gradient
        mask &= rows < cfg.t
    if cfg.sp != cfg.s:
        mask &= cols < cfg.s
    if q_ids is not None:
        mask &= q_ids[:, None] == k_ids[None, :]
    return mask


def _q_block(grid_index, num_blocks):
    # Query blocks run last-first: under a causal mask the late blocks have the most
    # key tiles, and starting them first evens out the tail of the launch.
    return num_blocks - 1 - grid_index


def _store(ref, value):
    # A plain `ref[...] = value` lowers to a swap, which also loads the old contents.
    plgpu.store(ref, value)


def _precision(dtype):
    # float32 inputs get IEEE float32 products (no TF32), so they match the reference.
    return lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _three_loops(rng_ref, body, carry):
    """Visit masked tiles [lo, ulo), unmasked [ulo, uhi), masked [uhi, hi)."""
    lo, ulo, uhi, hi = rng_ref[0], rng_ref[1], rng_ref[2], rng_ref[3]
    carry = lax.fori_loop(lo, ulo, functools.partial(body, True), carry)
    carry = lax.fori_loop(ulo, uhi, functools.partial(body, False), carry)
    return lax.fori_loop(uhi, hi, functools.partial(body, True), carry)


def _fwd_kernel(rng_ref, q_ref, k_ref, v_ref, *refs, cfg: _Config):
    if cfg.has_seg:
        qseg_ref, kvseg_ref, o_ref, lse_ref = refs
    else:
        o_ref, lse_ref = refs
    bq, bk = cfg.blocks.block_q, cfg.blocks.block_k
    q_start = _q_block(pl.program_id(0), pl.num_programs(0)) * bq
    q = q_ref[...]
    prec = _precision(q.dtype)
    q_ids = qseg_ref[...] if cfg.has_seg else None
    qk_scale = cfg.scale * _LOG2E

    def body(masked, j, carry):
        acc, m, l = carry
        k_start = pl.multiple_of(j * bk, bk)
        k = k_ref[pl.ds(k_start, bk), :]
        v = v_ref[pl.ds(k_start, bk), :]
        logits = plgpu.dot(q, k, trans_b=True, precision=prec) * qk_scale
        if masked:
            k_ids = kvseg_ref[pl.ds(k_start, bk)] if cfg.has_seg else None
            tile = _tile_mask(cfg, q_start, k_start, bq, bk, q_ids, k_ids)
            logits = jnp.where(tile, logits, _MASK)
        m_new = jnp.maximum(m, logits.max(axis=1))
        alpha = jnp.exp2(m - m_new)
        p = jnp.exp2(logits - m_new[:, None])
        l = l * alpha + p.sum(axis=1)
        acc = acc * alpha[:, None] + plgpu.dot(p.astype(v.dtype), v, precision=prec)
        return acc, m_new, l

    carry = (jnp.zeros(q.shape, jnp.float32), jnp.full((bq,), _M_FLOOR, jnp.float32), jnp.zeros((bq,), jnp.float32))
    acc, m, l = _three_loops(rng_ref, body, carry)
    seen = l > 0
    _store(o_ref, (acc / jnp.where(seen, l, 1.0)[:, None]).astype(o_ref.dtype))
    _store(lse_ref, jnp.where(seen, m + jnp.log2(jnp.where(seen, l, 1.0)), _LSE_EMPTY))


def _dq_kernel(rng_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, cfg: _Config):
    if cfg.has_seg:
        qseg_ref, kvseg_ref, dq_ref = refs
    else:
        (dq_ref,) = refs
    bq, bk = cfg.blocks.block_q_dq, cfg.blocks.block_k_dq
    q_start = _q_block(pl.program_id(0), pl.num_programs(0)) * bq
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    prec = _precision(q.dtype)
    q_ids = qseg_ref[...] if cfg.has_seg else None
    qk_scale = cfg.scale * _LOG2E

    def body(masked, j, dq):
        k_start = pl.multiple_of(j * bk, bk)
        k = k_ref[pl.ds(k_start, bk), :]
        v = v_ref[pl.ds(k_start, bk), :]
        logits = plgpu.dot(q, k, trans_b=True, precision=prec) * qk_scale
        if masked:
            k_ids = kvseg_ref[pl.ds(k_start, bk)] if cfg.has_seg else None
            tile = _tile_mask(cfg, q_start, k_start, bq, bk, q_ids, k_ids)
            logits = jnp.where(tile, logits, _MASK)
        p = jnp.exp2(logits - lse[:, None])
        dp = plgpu.dot(do, v, trans_b=True, precision=prec)
        ds = p * (dp - delta[:, None])
        return dq + plgpu.dot(ds.astype(k.dtype), k, precision=prec)

    dq = _three_loops(rng_ref, body, jnp.zeros(q.shape, jnp.float32))
    _store(dq_ref, (dq * cfg.scale).astype(dq_ref.dtype))


def _dkv_kernel(rng_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, cfg: _Config, groups: int):
    if cfg.has_seg:
        qseg_ref, kvseg_ref, dk_ref, dv_ref = refs
    else:
        dk_ref, dv_ref = refs
    bq, bk = cfg.blocks.block_q_dkv, cfg.blocks.block_k_dkv
    k_start = pl.program_id(0) * bk
    k, v = k_ref[...], v_ref[...]
    prec = _precision(k.dtype)
    k_ids = kvseg_ref[...] if cfg.has_seg else None
    qk_scale = cfg.scale * _LOG2E

    # The G query heads sharing this key/value head accumulate into one dk, dv: no
    # atomics and no [B, S, N, H] intermediate.
    def group(g, carry):
        def body(masked, i, carry):
            dk, dv = carry
            q_start = pl.multiple_of(i * bq, bq)
            q = q_ref[pl.ds(q_start, bq), g, :]
            do = do_ref[pl.ds(q_start, bq), g, :]
            lse = lse_ref[g, pl.ds(q_start, bq)]
            delta = delta_ref[g, pl.ds(q_start, bq)]
            logits = plgpu.dot(q, k, trans_b=True, precision=prec) * qk_scale
            if masked:
                q_ids = qseg_ref[pl.ds(q_start, bq)] if cfg.has_seg else None
                tile = _tile_mask(cfg, q_start, k_start, bq, bk, q_ids, k_ids)
                logits = jnp.where(tile, logits, _MASK)
            p = jnp.exp2(logits - lse[:, None])
            dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True, precision=prec)
            dp = plgpu.dot(do, v, trans_b=True, precision=prec)
            ds = p * (dp - delta[:, None])
            dk = dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True, precision=prec)
            return dk, dv

        return _three_loops(rng_ref, body, carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, groups, group, (zeros, zeros))
    _store(dk_ref, (dk * cfg.scale).astype(dk_ref.dtype))
    _store(dv_ref, dv.astype(dv_ref.dtype))


# ----------------------------------------------------------------------------------------
# pallas_call wrappers and the custom VJP.


def _compiler_params(cfg: _Config, tile: int, accumulators: int):
    """Triton launch parameters; `tile` and `accumulators` count float32 elements."""
    if cfg.interpret:
        return None
    # Eight warps once the logits tile or the float32 accumulators would not fit the
    # registers of four (about 64 KiB for 128 threads) without spilling.
    warps = cfg.blocks.num_warps or (8 if tile >= 128 * 64 or accumulators >= 2 * 64 * 128 else 4)
    return plgpu.CompilerParams(num_warps=warps, num_stages=cfg.blocks.num_stages)


def _forward(q, k, v, q_seg, kv_seg, rng, cfg: _Config):
    """out float[B, Tp, N, Hp], lse float32[B, N, Tp] (base 2)."""
    b, tp, n, h = q.shape
    sp, kh = k.shape[1], k.shape[2]
    groups = n // kh
    bq = cfg.blocks.block_q
    nq = tp // bq  # index maps mirror _q_block's reversed order
    in_specs = [
        pl.BlockSpec((None, None, 4), lambda i, bi, ni: (bi, nq - 1 - i, 0)),
        pl.BlockSpec((None, bq, None, h), lambda i, bi, ni: (bi, nq - 1 - i, ni, 0)),
        pl.BlockSpec((None, sp, None, h), lambda i, bi, ni: (bi, 0, ni // groups, 0)),
        pl.BlockSpec((None, sp, None, h), lambda i, bi, ni: (bi, 0, ni // groups, 0)),
    ]
    args = [rng, q, k, v]
    if cfg.has_seg:
        in_specs += [
            pl.BlockSpec((None, bq), lambda i, bi, ni: (bi, nq - 1 - i)),
            pl.BlockSpec((None, sp), lambda i, bi, ni: (bi, 0)),
        ]
        args += [q_seg, kv_seg]
    return pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg),
        grid=(nq, b, n),
        in_specs=in_specs,
        out_specs=[
            pl.BlockSpec((None, bq, None, h), lambda i, bi, ni: (bi, nq - 1 - i, ni, 0)),
            pl.BlockSpec((None, None, bq), lambda i, bi, ni: (bi, ni, nq - 1 - i)),
        ],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, tp), jnp.float32)],
        compiler_params=_compiler_params(cfg, bq * cfg.blocks.block_k, bq * h),
        interpret=cfg.interpret,
        name="flash_attention_fwd",
    )(*args)


def _backward(q, k, v, q_seg, kv_seg, rng_dq, rng_dkv, out, lse, do, cfg: _Config):
    """(dq, dk, dv) in the dtypes of q, k, v."""
    b, tp, n, h = q.shape
    sp, kh = k.shape[1], k.shape[2]
    groups = n // kh
    # delta_t = sum_h o * do: the softmax-gradient row term, cheap enough for XLA to fuse.
    delta = jnp.einsum(
        "btnh,btnh->bnt", out.astype(jnp.float32), do.astype(jnp.float32), precision=lax.Precision.HIGHEST
    )
    bs = cfg.blocks

    bq, bk = bs.block_q_dq, bs.block_k_dq
    nq = tp // bq
    in_specs = [
        pl.BlockSpec((None, None, 4), lambda i, bi, ni: (bi, nq - 1 - i, 0)),
        pl.BlockSpec((None, bq, None, h), lambda i, bi, ni: (bi, nq - 1 - i, ni, 0)),
        pl.BlockSpec((None, sp, None, h), lambda i, bi, ni: (bi, 0, ni // groups, 0)),
        pl.BlockSpec((None, sp, None, h), lambda i, bi, ni: (bi, 0, ni // groups, 0)),
        pl.BlockSpec((None, bq, None, h), lambda i, bi, ni: (bi, nq - 1 - i, ni, 0)),
        pl.BlockSpec((None, None, bq), lambda i, bi, ni: (bi, ni, nq - 1 - i)),
        pl.BlockSpec((None, None, bq), lambda i, bi, ni: (bi, ni, nq - 1 - i)),
    ]
    args = [rng_dq, q, k, v, do, lse, delta]
    if cfg.has_seg:
        in_specs += [
            pl.BlockSpec((None, bq), lambda i, bi, ni: (bi, nq - 1 - i)),
            pl.BlockSpec((None, sp), lambda i, bi, ni: (bi, 0)),
        ]
        args += [q_seg, kv_seg]
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg),
        grid=(nq, b, n),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((None, bq, None, h), lambda i, bi, ni: (bi, nq - 1 - i, ni, 0)),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_compiler_params(cfg, bq * bk, bq * h),
        interpret=cfg.interpret,
        name="flash_attention_dq",
    )(*args)

    bq, bk = bs.block_q_dkv, bs.block_k_dkv
    in_specs = [
        pl.BlockSpec((None, None, 4), lambda j, bi, ki: (bi, j, 0)),
        pl.BlockSpec((None, tp, groups, h), lambda j, bi, ki: (bi, 0, ki, 0)),
        pl.BlockSpec((None, bk, None, h), lambda j, bi, ki: (bi, j, ki, 0)),
        pl.BlockSpec((None, bk, None, h), lambda j, bi, ki: (bi, j, ki, 0)),
        pl.BlockSpec((None, tp, groups, h), lambda j, bi, ki: (bi, 0, ki, 0)),
        pl.BlockSpec((None, groups, tp), lambda j, bi, ki: (bi, ki, 0)),
        pl.BlockSpec((None, groups, tp), lambda j, bi, ki: (bi, ki, 0)),
    ]
    args = [rng_dkv, q, k, v, do, lse, delta]
    if cfg.has_seg:
        in_specs += [
            pl.BlockSpec((None, tp), lambda j, bi, ki: (bi, 0)),
            pl.BlockSpec((None, bk), lambda j, bi, ki: (bi, j)),
        ]
        args += [q_seg, kv_seg]
    kv_spec = pl.BlockSpec((None, bk, None, h), lambda j, bi, ki: (bi, j, ki, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, groups=groups),
        grid=(sp // bk, b, kh),
        in_specs=in_specs,
        out_specs=[kv_spec, kv_spec],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_compiler_params(cfg, bq * bk, 2 * bk * h),
        interpret=cfg.interpret,
        name="flash_attention_dkv",
    )(*args)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _flash(q, k, v, q_seg, kv_seg, ranges, cfg: _Config):
    return _forward(q, k, v, q_seg, kv_seg, ranges[0], cfg)[0]


def _flash_fwd(q, k, v, q_seg, kv_seg, ranges, cfg: _Config):
    out, lse = _forward(q, k, v, q_seg, kv_seg, ranges[0], cfg)
    # Named, so a remat policy that keeps them spares the backward a rerun of this kernel.
    out, lse = checkpoint_name(out, ATTENTION_OUT), checkpoint_name(lse, ATTENTION_STATS)
    return out, (q, k, v, q_seg, kv_seg, ranges, out, lse)


def _flash_bwd(cfg: _Config, res, do):
    q, k, v, q_seg, kv_seg, ranges, out, lse = res
    dq, dk, dv = _backward(q, k, v, q_seg, kv_seg, ranges[1], ranges[2], out, lse, do, cfg)
    # Integer inputs (segment ids, tile ranges) get no cotangent.
    return dq, dk, dv, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
