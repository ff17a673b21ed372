"""LLaVA-NeXT `anyres` tile merge and the variable-length image splice, in static shapes.

Letters: B batch rows, M image slots per row, K tile slots per image (the
largest grid + 1 global view), P tokens per tile, T the most tokens one image
can become (`AnyresConfig.max_tokens`), L text length, D LLM width.

Static shapes for `jit`: every image slot holds K tiles (tiles past the
image's own grid, and all tiles of an empty slot, are zeros that the tower
encodes and nothing reads) and becomes a buffer of T merged tokens of which
the first `length` are real. An image is described by its grid,
int32[6] = (rows, cols, row0, row1, col0, col1) (`AnyresConfig.image_grid`;
all zeros for an empty slot): how many tiles it has and which rows and columns
of the merged `rows*side x cols*side` feature map cover the image rather than
its padding. From the grids alone (no data-dependent shapes) a gather index
says, for each of the T merged positions, which tile token (or the newline)
it takes; a second gather places the images' real tokens, one after another,
at the row's placeholder positions: the k-th placeholder of a row takes token
k of the concatenation of its images' first `length` tokens.
"""

from __future__ import annotations

import jax.numpy as jnp

from llava_jax.config import AnyresConfig

GRID_FIELDS = 6  # rows, cols, row0, row1, col0, col1


def image_lengths(grids, spec: AnyresConfig):
    """Tokens each image becomes: int32[..., 6] grids -> int32[...] (0 for an empty slot)."""
    rows, cols, r0, r1, c0, c1 = (grids[..., i] for i in range(GRID_FIELDS))
    present = rows > 0
    if spec.merge_type == "flat":
        n = (1 + rows * cols) * spec.tokens_per_tile
    else:
        n = spec.tokens_per_tile + (r1 - r0) * (c1 - c0 + 1)
    return jnp.where(present, n, 0).astype(jnp.int32)


def merge_sources(grids, spec: AnyresConfig, num_tiles: int):
    """For each merged token position, its index in the image's pool of tile tokens.

    The pool of one image is its K tiles' tokens in order (global view first,
    then the grid row by row), `K * P` of them, followed by the newline at index
    `K * P`. `spatial_unpad` (HF `pack_image_features`): the global view's P
    tokens, then the kept region of the merged map row by row, each row
    followed by the newline. `flat`: the tiles' tokens in order.

    Args:
      grids: int32[..., 6] image grids.
      spec: the anyres geometry.
      num_tiles: K, tile slots per image.
    Returns:
      int32[..., T]; positions past the image's length hold 0.
    """
    p, side, t_max = spec.tokens_per_tile, spec.side, spec.max_tokens
    t = jnp.arange(t_max, dtype=jnp.int32)
    length = image_lengths(grids, spec)[..., None]
    if spec.merge_type == "flat":
        src = jnp.broadcast_to(t, length.shape[:-1] + (t_max,))
        return jnp.where(t < length, src, 0)
    cols, r0, c0, c1 = (grids[..., i, None] for i in (1, 2, 4, 5))
    width = jnp.maximum(c1 - c0 + 1, 1)  # kept columns + the newline
    u = jnp.maximum(t - p, 0)
    row, col = r0 + u // width, c0 + u % width
    tile = 1 + (row // side) * cols + (col // side)
    from_grid = tile * p + (row % side) * side + (col % side)
    newline = u % width == width - 1
    src = jnp.where(t < p, t, jnp.where(newline, num_tiles * p, from_grid))
    return jnp.where(t < length, src, 0).astype(jnp.int32)


def merge_tiles(tile_tokens, newline, grids, spec: AnyresConfig):
    """Tile tokens -> each image's merged token buffer.

    Args:
      tile_tokens: float[B, M, K, P, D] projected tokens of every tile slot.
      newline: float[D] learned newline embedding, or None (`flat`).
      grids: int32[B, M, 6].
      spec: the anyres geometry.
    Returns:
      float[B, M, T, D]: the first `image_lengths(grids)` tokens of each image are real.
    """
    b, m, k, p, d = tile_tokens.shape
    pool = tile_tokens.reshape(b, m, k * p, d)
    if newline is None:
        newline = jnp.zeros((d,), tile_tokens.dtype)
    pool = jnp.concatenate([pool, jnp.broadcast_to(newline.astype(pool.dtype), (b, m, 1, d))], axis=2)
    src = merge_sources(grids, spec, k)
    return jnp.take_along_axis(pool, src[..., None], axis=2)


def splice_index(is_image, lengths, max_tokens: int):
    """For each text position, the index of its image token in the row's `[M * T]` image buffer.

    Args:
      is_image: bool[B, L] placeholder positions.
      lengths: int32[B, M] real tokens of each image slot, in placeholder order.
      max_tokens: T, buffer positions per image.
    Returns:
      int32[B, L] (meaningful where `is_image`; clipped into range elsewhere).
    """
    m = lengths.shape[1]
    slot = jnp.cumsum(is_image, axis=1, dtype=jnp.int32) - 1
    starts = jnp.cumsum(lengths, axis=1) - lengths
    # The image of a slot: the last one starting at or before it (empty slots start where the next does).
    which = jnp.sum(starts[:, None, :] <= slot[:, :, None], axis=-1) - 1
    which = jnp.clip(which, 0, m - 1)
    offset = slot - jnp.take_along_axis(starts, which, axis=1)
    return jnp.clip(which * max_tokens + jnp.clip(offset, 0, max_tokens - 1), 0, m * max_tokens - 1)
