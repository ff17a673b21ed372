"""LLaMA / Vicuna decoder (HF `LlamaForCausalLM` semantics) with a static-shape KV cache.

Letters: B batch, T length, S cache length, D width, N query heads,
K key/value heads, H head dim, F MLP width, V vocab, L layers.

Modes: no cache (training / full-sequence logits); `cache` given with
`decode=False` (prefill: attend within the prompt, write slots [0, T));
`decode=True` (append T tokens at `cache_index`, attend over the cache).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from llava_jax.config import LlamaConfig
from llava_jax.kernels import ATTENTION_OUT, ATTENTION_STATS, AttentionAxes, attention, heads_first_attention
from llava_jax.model.layers import Dense, RMSNorm, apply_rope, dtype_of, rope_cos_sin, rope_inv_freq
from llava_jax.sharding import (
    ACT_EMBED,
    ACT_HEADS,
    ACT_KV_HEADS,
    BATCH,
    EMBED,
    HEADS,
    KV,
    KV_HEADS,
    LAYERS,
    LENGTH,
    MLP,
    VOCAB,
    activation_constraint,
)

# Names (`checkpoint_name`) of the decoder layer's intermediates that remat policies save.
QUERY, KEY, VALUE = "query", "key", "value"  # the attention inputs, after RoPE
OUT_PROJ = "out_proj"  # o_proj output
MLP_GATE, MLP_UP = "mlp_gate", "mlp_up"  # the two MLP input projections
MLP_OUT = "mlp_out"  # down_proj output
LAYER_INPUT = "layer_input"  # the residual stream entering the layer (the scan carry)
ATTENTION_AXES = AttentionAxes(BATCH, ACT_HEADS, ACT_KV_HEADS)

_save = jax.checkpoint_policies.save_only_these_names
# What the backward pass keeps of each decoder layer, by `remat_policy` (`none`: no remat,
# everything XLA keeps). The scan carry (layer input) is always kept.
REMAT_POLICIES = {
    # Nothing: the backward reruns the whole layer forward, attention kernel included.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Every matmul output: the seven projections and, on the `xla` path, the [T, S]
    # attention logits and probabilities @ values. Kernels are not matmuls to XLA:
    # their forward is rerun.
    "dots": jax.checkpoint_policies.checkpoint_dots,
    # The weight matmuls' outputs (q, k, v, o, gate, up, down projections); attention
    # (kernel or [T, S] logits) is recomputed.
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    # The attention inputs after RoPE (q, k, v); the backward reruns the attention
    # forward, o_proj and the MLP.
    "qkv_proj": _save(QUERY, KEY, VALUE),
    # q, k, v, the attention output and its softmax statistics (pallas_gpu; splash and
    # cuDNN keep theirs inside the kernel, so their forward is rerun), o_proj, gate and up:
    # the backward reruns only norms, RoPE and the SwiGLU product.
    "minimal": _save(QUERY, KEY, VALUE, ATTENTION_OUT, ATTENTION_STATS, OUT_PROJ, MLP_GATE, MLP_UP),
}
# One line per policy for reports (`llava-jax plan`).
REMAT_SAVES = {
    "none": "no remat: every intermediate the backward needs",
    "full": "the layer input only; the backward reruns each layer",
    "dots": "every matmul output (on xla also the [T, S] logits)",
    "dots_with_no_batch_dims": "the q k v o gate up down projections",
    "qkv_proj": "q, k, v after RoPE",
    "minimal": "q k v, attention output + softmax stats, o_proj, gate, up",
}


class LlamaAttention(nn.Module):
    """Grouped-query self-attention with half-split RoPE."""

    config: LlamaConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids, padding_mask, layer_cache, cache_index):
        """x: float[B, T, D] -> (float[B, T, D], updated (k, v) float[B, K, S, H] or None)."""
        c = self.config
        kw = dict(
            use_bias=c.attention_bias,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            lora_rank=c.lora_rank,
            lora_alpha=c.lora_alpha,
            lora_dropout=c.lora_dropout,
        )
        q = Dense((c.num_heads, c.head_dim), (EMBED,), (HEADS, KV), name="q_proj", **kw)(x)
        k = Dense((c.num_kv_heads, c.head_dim), (EMBED,), (KV_HEADS, KV), name="k_proj", **kw)(x)
        v = Dense((c.num_kv_heads, c.head_dim), (EMBED,), (KV_HEADS, KV), name="v_proj", **kw)(x)
        q = checkpoint_name(apply_rope(q, cos, sin), QUERY)
        k = checkpoint_name(apply_rope(k, cos, sin), KEY)
        v = checkpoint_name(v, VALUE)
        new_cache = None
        if layer_cache is None or not self.decode:
            out = attention(
                q,
                k,
                v,
                causal=True,
                segment_ids=segment_ids,
                padding_mask=padding_mask,
                impl=c.attention_impl,
                axis_names=ATTENTION_AXES,
            )
            out = checkpoint_name(out, ATTENTION_OUT)
            if layer_cache is not None:
                ck, cv = layer_cache
                new_cache = (
                    jax.lax.dynamic_update_slice(ck, _heads_first(k, ck.dtype), (0, 0, 0, 0)),
                    jax.lax.dynamic_update_slice(cv, _heads_first(v, cv.dtype), (0, 0, 0, 0)),
                )
        else:
            ck, cv = layer_cache
            # The cache is stored heads first ([B, K, S, H]), the layout the attention products
            # read: a step writes its T new slots and reads the cache in place (no transpose of
            # the whole cache per step).
            ck = _write_slots(ck, _heads_first(k, ck.dtype), cache_index)
            cv = _write_slots(cv, _heads_first(v, cv.dtype), cache_index)
            new_cache = (ck, cv)
            t, s = x.shape[1], ck.shape[2]
            # Slot j is visible to new token i when written (j <= cache_index + i) and not padding;
            # a per-row cache_index int32[B] gives each row its own limit.
            if jnp.ndim(cache_index) == 0:
                visible = (jnp.arange(s)[None, :] <= cache_index + jnp.arange(t)[:, None])[None]
            else:
                visible = jnp.arange(s) <= cache_index[:, None, None] + jnp.arange(t)[:, None]  # [B, T, S]
            mask = visible & padding_mask.astype(bool)[:, None, :]
            out = heads_first_attention(q, ck.astype(q.dtype), cv.astype(q.dtype), mask)
        out = Dense((c.hidden_size,), (HEADS, KV), (EMBED,), name="o_proj", **kw)(out)
        return checkpoint_name(out, OUT_PROJ), new_cache


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        """x: float[B, T, D] -> float[B, T, D]."""
        c = self.config
        kw = dict(
            use_bias=c.mlp_bias,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            lora_rank=c.lora_rank,
            lora_alpha=c.lora_alpha,
            lora_dropout=c.lora_dropout,
        )
        gate = checkpoint_name(Dense((c.intermediate_size,), (EMBED,), (MLP,), name="gate_proj", **kw)(x), MLP_GATE)
        up = checkpoint_name(Dense((c.intermediate_size,), (EMBED,), (MLP,), name="up_proj", **kw)(x), MLP_UP)
        out = Dense((c.hidden_size,), (MLP,), (EMBED,), name="down_proj", **kw)(jax.nn.silu(gate) * up)
        return checkpoint_name(out, MLP_OUT)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm decoder block; the scan carry is the residual stream float[B, T, D]."""

    config: LlamaConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids, padding_mask, cache_index, layer_cache):
        """One layer: (x, per-layer cache) -> (x, updated per-layer cache)."""
        c = self.config
        norm = dict(eps=c.rms_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
        x = checkpoint_name(x, LAYER_INPUT)
        h = RMSNorm(name="input_layernorm", **norm)(x)
        h, new_cache = LlamaAttention(c, self.decode, name="self_attn")(
            h, cos, sin, segment_ids, padding_mask, layer_cache, cache_index
        )
        x = x + h
        x = x + LlamaMLP(c, name="mlp")(RMSNorm(name="post_attention_layernorm", **norm)(x))
        x = activation_constraint(x, (BATCH, LENGTH, ACT_EMBED))
        return x, new_cache


class LlamaModel(nn.Module):
    """Token embedding, scanned decoder layers, final norm and LM head."""

    config: LlamaConfig
    decode: bool = False

    def setup(self):
        c = self.config
        self.embed_tokens = self.param(
            "embed_tokens",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (VOCAB, EMBED)),
            (c.vocab_size, c.hidden_size),
            dtype_of(c.param_dtype),
        )
        block = LlamaDecoderLayer
        if c.remat_policy != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[c.remat_policy], prevent_cse=False)
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0),
            length=c.num_layers,
            metadata_params={nn.PARTITION_NAME: LAYERS},
        )(c, self.decode)
        self.norm = RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype)
        if not c.tie_word_embeddings:
            self.lm_head = Dense(
                (c.vocab_size,), (EMBED,), (VOCAB,), use_bias=False, dtype=c.dtype, param_dtype=c.param_dtype
            )

    def embed(self, input_ids):
        """int[B, T] token ids (all < vocab_size) -> float[B, T, D] embeddings in compute dtype."""
        return jnp.take(self.embed_tokens, input_ids, axis=0).astype(dtype_of(self.config.dtype))

    def logits(self, hidden):
        """float[B, T, D] final-normed hidden states -> float32[B, T, V] logits."""
        c = self.config
        if c.tie_word_embeddings:
            w = self.embed_tokens.astype(dtype_of(c.dtype))
            return jnp.einsum("btd,vd->btv", hidden, w, preferred_element_type=jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(
        self, embeds, positions, segment_ids=None, padding_mask=None, cache=None, cache_index=None, return_hidden=False
    ):
        """Run the decoder on embeddings.

        Args:
          embeds: float[B, T, D] input embeddings.
          positions: int32[B, T] RoPE positions.
          segment_ids: int32[B, T] packed-sample ids (attend within a segment) or None.
          padding_mask: bool[B, T] real tokens (no cache / prefill) or bool[B, S] valid
            cache slots including the new ones (decode).
          cache: {'k', 'v'}: float[L, B, K, S, H] or None.
          cache_index: first slot written by this call (decode only): int32[] for every row, or
            int32[B] per row (continuous batching: rows at different lengths).
          return_hidden: return the final-normed hidden states float[B, T, D] instead of logits.
        Returns:
          (float32[B, T, V] logits or hidden states, updated cache or None).
        """
        c = self.config
        dtype = dtype_of(c.dtype)
        max_pos = positions.max() if c.rope_scaling.rope_type == "dynamic" else None
        inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling, c.max_position_embeddings, max_pos)
        cos, sin = rope_cos_sin(positions, inv_freq, dtype)
        x = activation_constraint(embeds.astype(dtype), (BATCH, LENGTH, ACT_EMBED))
        layer_caches = None if cache is None else (cache["k"], cache["v"])
        x, new_caches = self.layers(x, cos, sin, segment_ids, padding_mask, cache_index, layer_caches)
        x = self.norm(x)
        new_cache = None if cache is None else {"k": new_caches[0], "v": new_caches[1]}
        if return_hidden:
            return x, new_cache
        return self.logits(x), new_cache


def _write_slots(cache, new, cache_index):
    """float[B, K, S, H] cache with float[B, K, T, H] `new` written from slot `cache_index`:
    int32[] (every row at the same slot) or int32[B] (each row at its own)."""
    if jnp.ndim(cache_index) == 0:
        return jax.lax.dynamic_update_slice(cache, new, (0, 0, cache_index, 0))
    write = jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice(c, n, (0, i, 0)))
    return write(cache, new, cache_index)


def _heads_first(x, dtype):
    """float[B, T, K, H] new keys or values -> float[B, K, T, H] in the cache's dtype."""
    return x.transpose(0, 2, 1, 3).astype(dtype)


def init_cache(config: LlamaConfig, batch: int, max_len: int, dtype=None) -> dict:
    """Zeroed KV cache {'k', 'v'}: float[L, B, K, S, H] (S = max_len), in compute dtype by default.

    Heads first, so each decode step's attention reads the cache in place.
    """
    dtype = dtype_of(config.dtype) if dtype is None else dtype
    shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
