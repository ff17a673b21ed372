"""Pallas flash attention (interpret mode) vs the reference, and its tile-skipping ranges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llava_jax.kernels import pallas_gpu
from tests.kernels.cases import CASES, Case, check_against_reference


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(case):
    check_against_reference("pallas_gpu", case)


def test_causal_with_more_queries_than_keys():
    """End-aligned causal: the first T - S query rows see no key and give 0 (splash refuses)."""
    check_against_reference("pallas_gpu", Case("f32-causal-t40-s24", "float32", True, 40, s=24, n=2, k=2))


def _dense_visible(q_seg, kv_seg, t, s, tp, sp, causal):
    """numpy bool[B, Tp, Sp]: the exact mask on the padded grid (padding invisible)."""
    rows, cols = np.arange(tp)[:, None], np.arange(sp)[None]
    vis = (rows < t) & (cols < s)
    if causal:
        vis = vis & (cols <= rows + s - t)
    vis = np.broadcast_to(vis, (q_seg.shape[0], tp, sp))
    return vis & (q_seg[:, :, None] == kv_seg[:, None, :])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t,s", [(100, 100), (70, 130)])
def test_tile_ranges_cover_every_visible_pair(causal, t, s):
    """Every visible pair lies in a visited tile; tiles visited unmasked are fully visible."""
    rng = np.random.default_rng(0)
    blocks = pallas_gpu.BlockSizes(32, 16, 16, 32, 16, 16)
    tp, sp = 128, 160
    # Row 0: aligned runs of 48 (many fully visible tiles); row 1: random sorted ids with
    # a padded stretch of keys, folded in as an id no query has.
    q_seg = np.stack([np.arange(tp) // 48, np.sort(rng.integers(0, 3, tp))])
    kv_seg = np.stack([np.arange(sp) // 48, np.sort(rng.integers(0, 3, sp))])
    kv_seg[1, 40:50] = -5
    cfg = pallas_gpu._Config(
        causal=causal, scale=1.0, t=t, s=s, tp=tp, sp=sp, has_seg=True, blocks=blocks, interpret=True
    )
    all_ranges = jax.jit(pallas_gpu._all_ranges, static_argnums=(2, 3))  # one compile, not 50
    fwd, dq, dkv = all_ranges(jnp.asarray(q_seg), jnp.asarray(kv_seg), cfg, 2)
    vis = _dense_visible(q_seg, kv_seg, t, s, tp, sp, causal)
    for ranges, bq, bk, transpose in [(fwd, 32, 16, False), (dq, 16, 32, False), (dkv, 16, 16, True)]:
        ranges = np.asarray(ranges)
        tiles = vis.reshape(2, tp // bq, bq, sp // bk, bk).transpose(0, 1, 3, 2, 4)
        any_vis, all_vis = tiles.any((-1, -2)), tiles.all((-1, -2))
        if transpose:
            any_vis, all_vis = any_vis.swapaxes(1, 2), all_vis.swapaxes(1, 2)
        lo, ulo, uhi, hi = np.moveaxis(ranges, -1, 0)
        assert (lo <= ulo).all() and (ulo <= uhi).all() and (uhi <= hi).all()
        idx = np.arange(any_vis.shape[-1])
        inside = (idx >= lo[..., None]) & (idx < hi[..., None])
        assert not (any_vis & ~inside).any()
        unmasked = (idx >= ulo[..., None]) & (idx < uhi[..., None])
        assert not (unmasked & ~all_vis).any()
        assert unmasked.any()  # the skipping of masks is exercised at all


def test_block_sizes_are_clipped_to_short_sequences():
    blocks = pallas_gpu._clip_blocks(pallas_gpu.DEFAULT_BLOCKS, 5, 40)
    assert blocks.block_q == 16 and blocks.block_k == 64 and blocks.block_k_dq == 64
    assert pallas_gpu._clip_blocks(pallas_gpu.DEFAULT_BLOCKS, 577, 577) == pallas_gpu.DEFAULT_BLOCKS
