"""The composite LLaVA model: `{vision, projector, llm}` and the static-shape image merge.

Letters: B batch rows, M image slots per row, S image side, T length,
P image tokens per image, D LLM width, V vocab.

Each row's placeholder tokens (`image_token_index`) receive that row's
projected image tokens in order: the k-th placeholder of row b takes token
k of the row's flattened `[M * P, D]` features. Shapes never depend on data.

High-resolution (`anyres`) models take K tiles per image slot,
`images: float[B, M, K, S, S, 3]`, with `image_grids: int32[B, M, 6]`; all
B*M*K tiles go through the tower in one pass, and each image becomes a
variable number of tokens inside a fixed buffer (see `llava_jax.model.anyres`
for how the static shapes are kept).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llava_jax.config import LlavaConfig
from llava_jax.model.anyres import image_lengths, merge_tiles, splice_index
from llava_jax.model.llama import LlamaModel
from llava_jax.model.projector import Projector
from llava_jax.model.vision import VisionTower
from llava_jax.sharding import ACT_EMBED, BATCH, LENGTH, activation_constraint


class LlavaModel(nn.Module):
    """LLaVA-1.5: CLIP tower -> projector -> LLaMA, one parameter namespace per part."""

    config: LlavaConfig
    decode: bool = False
    freeze_vision: bool = True

    def setup(self):
        c = self.config
        self.vision = VisionTower(c.vision, num_layers_to_run=c.vision_layers_used)
        self.projector = Projector(c.projector, image_newline=c.uses_image_newline)
        self.llm = LlamaModel(c.llm, decode=self.decode)

    def encode_images(self, images, image_grids=None):
        """Projected image tokens.

        Args:
          images: float[B, M, S, S, 3] normalised pixels (channels last); anyres:
            float[B, M, K, S, S, 3] tiles (global view first).
          image_grids: anyres only, int32[B, M, 6] (`AnyresConfig.image_grid`, zeros for empty slots).
        Returns:
          float[B, M * P, D] in the LLM compute dtype; anyres: float[B, M * T, D], each
          image's merged tokens in a buffer of T = `max_image_tokens` (see `model.anyres`).
        """
        c = self.config
        lead = images.shape[: (3 if c.anyres else 2)]
        tokens = self._project(images.reshape((-1,) + images.shape[len(lead) :]))
        if not c.anyres:
            b, m = lead
            return tokens.reshape(b, m * tokens.shape[1], tokens.shape[-1])
        if image_grids is None:
            raise ValueError("an anyres model needs image_grids with its images")
        newline = self.projector.newline if c.uses_image_newline else None
        merged = merge_tiles(tokens.reshape(lead + tokens.shape[1:]), newline, image_grids, c.anyres)
        b, m, t, d = merged.shape
        return merged.reshape(b, m * t, d)

    def _project(self, pixels):
        """float[N, S, S, 3] tiles -> float[N, P, D]: tower, feature selection, projector."""
        c = self.config
        states = self.vision(pixels, c.feature_layers)
        if c.vision_feature_select_strategy == "default":
            states = tuple(s[:, 1:] for s in states)
        features = states[0] if len(states) == 1 else jnp.concatenate(states, axis=-1)
        if self.freeze_vision:
            features = jax.lax.stop_gradient(features)
        return self.projector(features)

    def embed(self, input_ids, image_tokens=None, image_grids=None):
        """Text embeddings with image tokens scattered into the placeholder slots.

        Args:
          input_ids: int32[B, T] with `image_token_index` at image positions.
          image_tokens: float[B, M * P, D] from `encode_images`, or None (text only);
            anyres: float[B, M * max_image_tokens, D].
          image_grids: anyres only, int32[B, M, 6]: how many of each buffer's tokens are real.
        Returns:
          float[B, T, D].
        """
        c = self.config
        is_image = input_ids == c.image_token_index
        # The placeholder id may lie outside the vocabulary (original checkpoints): never look it up.
        embeds = self.llm.embed(jnp.where(is_image, 0, input_ids))
        if image_tokens is None:
            return embeds
        if c.anyres:
            slot = splice_index(is_image, image_lengths(image_grids, c.anyres), c.max_image_tokens)
        else:
            slot = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, image_tokens.shape[1] - 1)
        gathered = jnp.take_along_axis(image_tokens.astype(embeds.dtype), slot[..., None], axis=1)
        return jnp.where(is_image[..., None], gathered, embeds)

    def __call__(
        self,
        input_ids,
        images=None,
        positions=None,
        segment_ids=None,
        padding_mask=None,
        cache=None,
        cache_index=None,
        image_tokens=None,
        return_hidden=False,
        image_grids=None,
    ):
        """Logits (or hidden states) for token ids with images merged in.

        Args:
          input_ids: int32[B, T].
          images: float[B, M, S, S, 3] (anyres: float[B, M, K, S, S, 3] tiles) or None; ignored
            when `image_tokens` is given.
          positions: int32[B, T] (default 0..T-1 in every row).
          segment_ids: int32[B, T] packed-sample ids or None.
          padding_mask: bool[B, T] real tokens (bool[B, S] valid cache slots when decoding).
          cache, cache_index: KV cache and write offset, see `LlamaModel`.
          image_tokens: float[B, M * P, D] precomputed `encode_images` output.
          return_hidden: return final hidden states float[B, T, D] instead of logits.
          image_grids: anyres only, int32[B, M, 6] per-image grids (`AnyresConfig.image_grid`).
        Returns:
          (float32[B, T, V] logits or hidden states, updated cache or None).
        """
        if image_tokens is None and images is not None:
            image_tokens = self.encode_images(images, image_grids)
        embeds = activation_constraint(self.embed(input_ids, image_tokens, image_grids), (BATCH, LENGTH, ACT_EMBED))
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
        return self.llm(
            embeds,
            positions,
            segment_ids=segment_ids,
            padding_mask=padding_mask,
            cache=cache,
            cache_index=cache_index,
            return_hidden=return_hidden,
        )

    def logits_from_hidden(self, hidden):
        """float[B, T, D] final hidden states -> float32[B, T, V] logits (used by chunked losses)."""
        return self.llm.logits(hidden)
