"""LLaVA-1.5 multimodal projector (`mlp2x_gelu`): Linear -> exact GELU -> Linear.

With `image_newline` (LLaVA-NeXT's `spatial_unpad` merge) the projector also
owns the learned newline embedding that ends each row of an anyres image's
merged feature map: it lives in the LLM's embedding space, beside the weights
that map into that space, and trains with them (`^projector/`).
"""

from __future__ import annotations

import math

import flax.linen as nn

from llava_jax.config import ProjectorConfig
from llava_jax.model.layers import ACTIVATIONS, Dense, dtype_of
from llava_jax.sharding import EMBED, MLP, NORM


class Projector(nn.Module):
    """Maps vision features into the LLM embedding space."""

    config: ProjectorConfig
    image_newline: bool = False

    def setup(self):
        c = self.config
        kw = dict(use_bias=c.use_bias, dtype=c.dtype, param_dtype=c.param_dtype)
        self.linear_1 = Dense((c.out_features,), (None,), (MLP,), **kw)
        self.linear_2 = Dense((c.out_features,), (MLP,), (EMBED,), **kw)
        if self.image_newline:
            # HF LlavaNext initialises it N(0, 1/D).
            init = nn.initializers.normal(1.0 / math.sqrt(c.out_features))
            self.newline = self.param(
                "image_newline",
                nn.with_logical_partitioning(init, (NORM,)),
                (c.out_features,),
                dtype_of(c.param_dtype),
            )

    def __call__(self, features):
        """features: float[B, P, Dv] -> float[B, P, D]."""
        h = self.linear_1(features)
        h = ACTIVATIONS[self.config.hidden_act](h)
        return self.linear_2(h)
