"""CLIP ViT vision tower (HF `CLIPVisionModel` semantics), layers stacked with `nn.scan`.

Letters: B images, P patches (+1 with CLS), D width, N heads, H head dim,
F MLP width, L layers.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from llava_jax.config import VisionConfig
from llava_jax.kernels import AttentionAxes, attention
from llava_jax.model.layers import ACTIVATIONS, Dense, LayerNorm, dtype_of
from llava_jax.sharding import (
    ACT_EMBED,
    ACT_HEADS,
    BATCH,
    EMBED,
    HEADS,
    KV,
    LAYERS,
    LENGTH,
    MLP,
    activation_constraint,
)

# CLIP has as many key/value heads as query heads: both split as the query heads.
ATTENTION_AXES = AttentionAxes(BATCH, ACT_HEADS, ACT_HEADS)


class VisionAttention(nn.Module):
    """Bidirectional multi-head self-attention with biases (CLIP)."""

    config: VisionConfig

    @nn.compact
    def __call__(self, x):
        """x: float[B, P, D] -> float[B, P, D]."""
        c = self.config
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        heads = (c.num_heads, c.head_dim)
        q = Dense(heads, (EMBED,), (HEADS, KV), name="q_proj", **kw)(x)
        k = Dense(heads, (EMBED,), (HEADS, KV), name="k_proj", **kw)(x)
        v = Dense(heads, (EMBED,), (HEADS, KV), name="v_proj", **kw)(x)
        out = attention(q, k, v, causal=False, impl=c.attention_impl, axis_names=ATTENTION_AXES)
        return Dense((c.hidden_size,), (HEADS, KV), (EMBED,), name="out_proj", **kw)(out)


class VisionMLP(nn.Module):
    """fc1 -> activation -> fc2."""

    config: VisionConfig

    @nn.compact
    def __call__(self, x):
        """x: float[B, P, D] -> float[B, P, D]."""
        c = self.config
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        h = Dense((c.intermediate_size,), (EMBED,), (MLP,), name="fc1", **kw)(x)
        h = ACTIVATIONS[c.hidden_act](h)
        return Dense((c.hidden_size,), (MLP,), (EMBED,), name="fc2", **kw)(h)


class VisionEncoderLayer(nn.Module):
    """Pre-LN transformer block; scanned over layers. Carry x: float[B, P, D]."""

    config: VisionConfig

    @nn.compact
    def __call__(self, x, active):
        """x: float[B, P, D], active: bool[] (False: layer skipped) -> (x, None)."""
        c = self.config
        kw = dict(eps=c.layer_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
        ln1 = LayerNorm(name="layer_norm1", **kw)
        attn = VisionAttention(c, name="self_attn")
        ln2 = LayerNorm(name="layer_norm2", **kw)
        mlp = VisionMLP(c, name="mlp")

        def block(mdl, h):
            h = h + attn(ln1(h))
            h = h + mlp(ln2(h))
            return activation_constraint(h, (BATCH, LENGTH, ACT_EMBED))

        if active is None or self.is_initializing():
            return block(self, x), None
        # Layers past the selected feature layer are never computed (the cond skips them),
        # yet their weights stay in the tree so HF round trips keep every tensor.
        return nn.cond(active, block, lambda mdl, h: h, self, x), None


class VisionTower(nn.Module):
    """CLIP vision transformer returning the hidden states LLaVA selects.

    `num_layers_to_run` encoder layers are computed (of `config.num_layers`
    stored); the post-layernorm is stored but unused by LLaVA.
    """

    config: VisionConfig
    num_layers_to_run: int | None = None

    @nn.compact
    def __call__(self, images, feature_layers: tuple[int, ...] = (-2,)):
        """Hidden states at `feature_layers` (HF indexing: 0 = embeddings, -1 = last layer).

        Args:
          images: float[B, S, S, 3] normalised pixels (channels last).
          feature_layers: hidden-state indices to return.
        Returns:
          tuple of float[B, P + 1, D], one per requested layer (CLS first).
        """
        c = self.config
        dtype = dtype_of(c.dtype)
        pdtype = dtype_of(c.param_dtype)
        b, s, _, ch = images.shape
        p = c.patch_size
        g = s // p
        if s != c.image_size:
            raise ValueError(f"images are {s}px, the vision tower expects {c.image_size}px")
        init = nn.initializers.normal(0.02)
        patch_kernel = self.param(
            "patch_embedding",
            nn.with_logical_partitioning(init, (None, None, None, EMBED)),
            (p, p, ch, c.hidden_size),
            pdtype,
        )
        class_embedding = self.param(
            "class_embedding", nn.with_logical_partitioning(init, (EMBED,)), (c.hidden_size,), pdtype
        )
        position_embedding = self.param(
            "position_embedding",
            nn.with_logical_partitioning(init, (None, EMBED)),
            (c.num_patches + 1, c.hidden_size),
            pdtype,
        )
        # A stride-p convolution is a matmul over non-overlapping p x p x C patches.
        patches = images.astype(dtype).reshape(b, g, p, g, p, ch).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(b, g * g, p * p * ch)
        x = jnp.einsum(
            "bpc,cd->bpd",
            patches,
            patch_kernel.reshape(p * p * ch, -1).astype(dtype),
            preferred_element_type=jnp.float32,
        )
        cls = jnp.broadcast_to(class_embedding.astype(jnp.float32), (b, 1, c.hidden_size))
        x = jnp.concatenate([cls, x], axis=1) + position_embedding.astype(jnp.float32)[None]
        x = LayerNorm(c.layer_norm_eps, c.dtype, c.param_dtype, name="pre_layrnorm")(x.astype(dtype))
        post_layernorm = LayerNorm(c.layer_norm_eps, c.dtype, c.param_dtype, name="post_layernorm")
        if self.is_initializing():
            post_layernorm(x[:, 0])  # HF keeps it for the pooled output; LLaVA never applies it

        n_total = c.num_layers
        wanted = sorted({layer % (n_total + 1) for layer in feature_layers})
        n_run = self.num_layers_to_run if self.num_layers_to_run is not None else max(wanted)
        if n_run < max(wanted):
            raise ValueError(f"feature layers {feature_layers} need {max(wanted)} layers, running {n_run}")
        layers = nn.scan(
            VisionEncoderLayer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=0,
            length=n_total,
            metadata_params={nn.PARTITION_NAME: LAYERS},
        )(c, name="layers")

        if wanted == [n_run] and n_run == n_total:
            # Common fast path needs every layer: no per-layer condition.
            x, _ = layers(x, jnp.ones((n_total,), bool))
            return tuple(x for _ in feature_layers)
        if wanted == [n_run] or self.is_initializing():
            # Only the last wanted state is needed: one scan whose extra layers are skipped.
            last, _ = layers(x, jnp.arange(n_total) < n_run)
            if wanted == [n_run]:
                return tuple(last for _ in feature_layers)
        # Several states wanted: run segment by segment up to each wanted layer.
        states = {0: x}
        h = x
        start = 0
        for stop in (w for w in wanted if w > 0):
            idx = jnp.arange(n_total)
            h, _ = layers(h, (idx >= start) & (idx < stop))
            states[stop] = h
            start = stop
        return tuple(states[layer % (n_total + 1)] for layer in feature_layers)
