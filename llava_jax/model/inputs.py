"""Model inputs from HF processor conventions: flat images split over the rows that hold their placeholders."""

from __future__ import annotations

import numpy as np

from llava_jax.config import LlavaConfig


def images_per_row(input_ids: np.ndarray, pixel_values, config: LlavaConfig):
    """Split HF-style flat images over batch rows by counting each row's placeholders.

    Args:
      input_ids: int[B, T] with `image_seq_length` placeholders per image.
      pixel_values: float[N, 3, S, S] (channels first, HF processor output) or None.
    Returns:
      float32[B, M, S, S, 3] images in row order (zero-filled slots), or None without images.
    Raises:
      ValueError when placeholders and images disagree (never a silent misalignment).
    """
    counts = (input_ids == config.image_token_index).sum(axis=1)
    n_images = 0 if pixel_values is None else int(np.shape(pixel_values)[0])
    per = config.image_seq_length
    bad = [int(b) for b in np.nonzero(counts % per)[0]]
    if bad:
        raise ValueError(
            f"row {bad[0]} has {int(counts[bad[0]])} image placeholders, not a multiple of image_seq_length={per}"
        )
    rows = counts // per
    if int(rows.sum()) != n_images:
        raise ValueError(
            f"input_ids hold placeholders for {int(rows.sum())} image(s) "
            f"({int(counts.sum())} tokens of id {config.image_token_index}) but {n_images} "
            f"image(s) were given"
        )
    if n_images == 0:
        return None
    pixels = np.asarray(pixel_values, np.float32)
    if pixels.ndim != 4 or pixels.shape[1] != config.vision.num_channels:
        raise ValueError(f"pixel_values must be [N, {config.vision.num_channels}, H, W], got {pixels.shape}")
    pixels = pixels.transpose(0, 2, 3, 1)
    out = np.zeros((len(rows), int(rows.max())) + pixels.shape[1:], np.float32)
    k = 0
    for b, n in enumerate(rows):
        out[b, :n] = pixels[k : k + n]
        k += n
    return out


def anyres_images_per_row(input_ids: np.ndarray, pixel_values, image_sizes, config: LlavaConfig):
    """HF `LlavaNextProcessor` outputs -> the anyres model's tiles and grids, images split over rows.

    Each image's placeholder count follows from its size (`config.image_tokens(h, w)`);
    a row's placeholders are covered by the next images in order.

    Args:
      input_ids: int[B, T].
      pixel_values: float[N, K', 3, S, S] (channels first, tiles padded to K' per image, as HF
        returns them) or a list of N float[k_i, 3, S, S]; None without images.
      image_sizes: int[N, 2] original (height, width) of each image.
    Returns:
      (float32[B, M, K, S, S, 3] tiles with K = `config.anyres.max_tiles`, int32[B, M, 6] grids),
      or (None, None) without images.
    Raises:
      ValueError when placeholders, sizes and tiles disagree (never a silent misalignment).
    """
    spec = config.anyres
    counts = (input_ids == config.image_token_index).sum(axis=1)
    n_images = 0 if pixel_values is None else len(pixel_values)
    sizes = np.zeros((0, 2), np.int64) if image_sizes is None else np.asarray(image_sizes).reshape(-1, 2)
    if len(sizes) != n_images:
        raise ValueError(f"{n_images} image(s) but {len(sizes)} image_sizes")
    tokens = [config.image_tokens(int(h), int(w)) for h, w in sizes]
    rows: list[list[int]] = []
    k = 0
    for b, count in enumerate(counts):
        mine, total = [], 0
        while total < count and k < n_images:
            mine.append(k)
            total += tokens[k]
            k += 1
        if total != count:
            raise ValueError(
                f"row {b} has {int(count)} image placeholders but its image(s) of sizes "
                f"{[tuple(int(x) for x in sizes[i]) for i in mine]} make {total} tokens"
            )
        rows.append(mine)
    if k != n_images:
        raise ValueError(f"input_ids hold placeholders for {k} image(s) but {n_images} image(s) were given")
    if n_images == 0:
        return None, None
    s, c = config.vision.image_size, config.vision.num_channels
    m = max(len(r) for r in rows)
    images = np.zeros((len(rows), m, spec.max_tiles, s, s, c), np.float32)
    grids = np.zeros((len(rows), m, 6), np.int32)
    for b, mine in enumerate(rows):
        for j, i in enumerate(mine):
            h, w = (int(x) for x in sizes[i])
            need = spec.num_tiles(h, w)
            tiles = np.asarray(pixel_values[i], np.float32)
            if tiles.ndim != 4 or tiles.shape[1:] != (c, s, s) or tiles.shape[0] < need:
                raise ValueError(
                    f"image {i} ({h}x{w}) needs {need} tiles of [{c}, {s}, {s}], pixel_values has {tiles.shape}"
                )
            images[b, j, :need] = tiles[:need].transpose(0, 2, 3, 1)
            grids[b, j] = spec.image_grid(h, w)
    return images, grids


def model_images(input_ids: np.ndarray, pixel_values, image_sizes, config: LlavaConfig):
    """HF processor outputs -> `(images, image_grids)` for `LlavaModel` (grids None unless anyres).

    `image_sizes` (int[N, 2], HF `LlavaNextProcessor`) is needed by anyres models and
    ignored by the others; see `images_per_row` and `anyres_images_per_row`.
    """
    if config.anyres:
        if pixel_values is not None and image_sizes is None:
            raise ValueError("an anyres model needs image_sizes (int[N, 2], height and width) with pixel_values")
        return anyres_images_per_row(input_ids, pixel_values, image_sizes, config)
    return images_per_row(input_ids, pixel_values, config), None
