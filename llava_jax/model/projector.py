"""LLaVA-1.5 multimodal projector (`mlp2x_gelu`): Linear -> exact GELU -> Linear."""

from __future__ import annotations

import flax.linen as nn

from llava_jax.config import ProjectorConfig
from llava_jax.model.layers import ACTIVATIONS, Dense
from llava_jax.sharding import EMBED, MLP


class Projector(nn.Module):
    """Maps vision features into the LLM embedding space."""

    config: ProjectorConfig

    @nn.compact
    def __call__(self, features):
        """features: float[B, P, Dv] -> float[B, P, D]."""
        c = self.config
        kw = dict(use_bias=c.use_bias, dtype=c.dtype, param_dtype=c.param_dtype)
        h = Dense((c.out_features,), (None,), (MLP,), name="linear_1", **kw)(features)
        h = ACTIVATIONS[c.hidden_act](h)
        return Dense((c.out_features,), (MLP,), (EMBED,), name="linear_2", **kw)(h)
