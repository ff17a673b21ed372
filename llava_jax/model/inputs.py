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
