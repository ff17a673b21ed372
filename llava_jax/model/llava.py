"""The composite LLaVA model: `{vision, projector, llm}` and the static-shape image merge.

Letters: B batch rows, M image slots per row, S image side, T length,
P image tokens per image, D LLM width, V vocab.

Each row's placeholder tokens (`image_token_index`) receive that row's
projected image tokens in order: the k-th placeholder of row b takes token
k of the row's flattened `[M * P, D]` features. Shapes never depend on data.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llava_jax.config import LlavaConfig
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
        self.projector = Projector(c.projector)
        self.llm = LlamaModel(c.llm, decode=self.decode)

    def encode_images(self, images):
        """Projected image tokens.

        Args:
          images: float[B, M, S, S, 3] normalised pixels (channels last).
        Returns:
          float[B, M * P, D] in the LLM compute dtype.
        """
        c = self.config
        b, m = images.shape[:2]
        states = self.vision(images.reshape((b * m,) + images.shape[2:]), c.feature_layers)
        if c.vision_feature_select_strategy == "default":
            states = tuple(s[:, 1:] for s in states)
        features = states[0] if len(states) == 1 else jnp.concatenate(states, axis=-1)
        if self.freeze_vision:
            features = jax.lax.stop_gradient(features)
        tokens = self.projector(features)
        return tokens.reshape(b, m * tokens.shape[1], tokens.shape[-1])

    def embed(self, input_ids, image_tokens=None):
        """Text embeddings with image tokens scattered into the placeholder slots.

        Args:
          input_ids: int32[B, T] with `image_token_index` at image positions.
          image_tokens: float[B, M * P, D] from `encode_images`, or None (text only).
        Returns:
          float[B, T, D].
        """
        c = self.config
        is_image = input_ids == c.image_token_index
        # The placeholder id may lie outside the vocabulary (original checkpoints): never look it up.
        embeds = self.llm.embed(jnp.where(is_image, 0, input_ids))
        if image_tokens is None:
            return embeds
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
    ):
        """Logits (or hidden states) for token ids with images merged in.

        Args:
          input_ids: int32[B, T].
          images: float[B, M, S, S, 3] or None; ignored when `image_tokens` is given.
          positions: int32[B, T] (default 0..T-1 in every row).
          segment_ids: int32[B, T] packed-sample ids or None.
          padding_mask: bool[B, T] real tokens (bool[B, S] valid cache slots when decoding).
          cache, cache_index: KV cache and write offset, see `LlamaModel`.
          image_tokens: float[B, M * P, D] precomputed `encode_images` output.
          return_hidden: return final hidden states float[B, T, D] instead of logits.
        Returns:
          (float32[B, T, V] logits or hidden states, updated cache or None).
        """
        if image_tokens is None and images is not None:
            image_tokens = self.encode_images(images)
        embeds = activation_constraint(self.embed(input_ids, image_tokens), (BATCH, LENGTH, ACT_EMBED))
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
