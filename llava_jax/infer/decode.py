"""Device side of generation: prefill, the first token, and the jitted decode loop.

Letters: B batch rows, T prompt length, S cache length, N max new tokens,
V vocab, L layers, K key/value heads, H head dim.

The decode state is a dict of arrays: `cache` {'k', 'v'}, `token` int32[B]
(last token, fed next), `position` int32[B] (its RoPE position), `done`
bool[B], `out` int32[B, N], `step` int32[] (tokens made so far) and, when
asked for, `logits` float32[B, N, V].

Two layouts of the decoder weights and cache, the same layer module in both:
- `scan`: the model's own scanned decoder over stacked weights and the
  stacked cache float[L, B, K, S, H] (no extra memory).
- `unrolled`: one buffer per layer (`UnrolledLayers`: the weights split once
  per model and kept in `Llava.decode_layers`, cache a tuple of L
  float[B, K, S, H]) and a Python loop over layers.
  XLA:CPU copies every slice it takes of a stacked weight inside a loop; with
  separate buffers the dots read the weights in place. Measured on bench-small
  (float32, 64 new tokens): 2-core CPU about 6x faster decode at batch 1; H200
  1.06x at batch 1 and 2.3x at batch 8. It costs a second copy of the decoder
  weights, so `auto` falls back to `scan` where that copy would not fit.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from llava_jax.config import LlavaConfig
from llava_jax.infer.sampling import SamplingMode, sample_tokens
from llava_jax.model.layers import dtype_of, rope_cos_sin, rope_inv_freq
from llava_jax.model.llama import LlamaDecoderLayer, LlamaModel, init_cache
from llava_jax.model.llava import LlavaModel

LAYOUTS = ("auto", "scan", "unrolled")


@dataclasses.dataclass(frozen=True)
class UnrolledLayers:
    """The decoder's weights in the unrolled decode layout: one parameter tree of separate buffers per layer.

    A second copy of `params['llm']['layers']` (`nbytes` bytes in all, per device
    its shards' share: e.g. 12.9 GB for Vicuna-7B's 32 layers in bfloat16, 25.8 GB
    in float32). `llava_jax.Llava` keeps one in its `decode_layers` field once
    an unrolled `generate` has made it; `matches(params)` says whether it was made
    from these very arrays (any new parameter arrays make it stale).
    """

    layers: tuple  # L trees, each like one layer of params['llm']['layers']
    source: tuple  # id() of each stacked leaf it was split from
    nbytes: int

    def matches(self, params: dict) -> bool:
        return self.source == _source_ids(params)


def _source_ids(params: dict) -> tuple:
    return tuple(id(x) for x in jax.tree.leaves(params["llm"]["layers"]))


@jax.jit
def _split(stacked):
    n = jax.tree.leaves(stacked)[0].shape[0]
    return tuple(jax.tree.map(lambda p, i=i: p[i], stacked) for i in range(n))


def unrolled_layers(params: dict) -> UnrolledLayers:
    """Split the stacked decoder weights `params['llm']['layers']` (leaves [L, ...]) into L per-layer trees."""
    stacked = params["llm"]["layers"]
    nbytes = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(stacked))
    return UnrolledLayers(_split(stacked), _source_ids(params), nbytes)


def decode_layers_for(model) -> UnrolledLayers:
    """`model.decode_layers` when it matches `model.params`, else a new one, kept in `model.decode_layers`
    when the model has that field (`llava_jax.Llava` does)."""
    kept = getattr(model, "decode_layers", None)
    if kept is not None and kept.matches(model.params):
        return kept
    made = unrolled_layers(model.params)
    if hasattr(model, "decode_layers"):
        model.decode_layers = made
    return made


def resolve_layout(layout: str, model=None) -> str:
    """The layout to use: `auto` is `unrolled` unless its copy of the decoder weights would not fit.

    `auto` picks `scan` when the copy (per device) exceeds half the free memory a
    device reports; devices that report none (CPU) count as fitting.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} not in {LAYOUTS}")
    if layout != "auto":
        return layout
    return "unrolled" if model is None or _copy_fits(model) else "scan"


def _copy_fits(model) -> bool:
    kept = getattr(model, "decode_layers", None)
    if kept is not None and kept.matches(model.params):
        return True
    extra: dict = {}
    for leaf in jax.tree.leaves(model.params["llm"]["layers"]):
        for shard in leaf.addressable_shards:
            extra[shard.device] = extra.get(shard.device, 0) + shard.data.nbytes
    for device, nbytes in extra.items():
        stats = device.memory_stats()
        if stats and "bytes_limit" in stats and nbytes > (stats["bytes_limit"] - stats.get("bytes_in_use", 0)) / 2:
            return False
    return True


def _step_key(seed_key, step):
    return jax.random.fold_in(seed_key, step)


@functools.partial(jax.jit, static_argnames=("config", "cache_len", "unrolled"))
def prefill(params, input_ids, images, mask, image_grids=None, *, config: LlavaConfig, cache_len: int, unrolled: bool):
    """Run the prompt once, filling cache slots [0, T).

    Independent of the sampling settings, so it compiles once per prompt shape.

    Args:
      input_ids: int32[B, T] left-padded prompts; images: float[B, M, S, S, 3] or None
        (anyres: float[B, M, K, S, S, 3] tiles with `image_grids` int32[B, M, 6]).
      mask: bool[B, T] real tokens.
    Returns:
      (float32[B, V] logits of the last position, cache, int32[B] position of the next token).
    """
    b = input_ids.shape[0]
    positions = jnp.where(mask, jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    model = LlavaModel(config)
    cache = init_cache(config.llm, b, cache_len)
    hidden, cache = model.apply(
        {"params": params},
        input_ids,
        images,
        positions=positions,
        padding_mask=mask,
        cache=cache,
        return_hidden=True,
        image_grids=image_grids,
    )
    if unrolled:
        cache = {name: tuple(c[i] for i in range(c.shape[0])) for name, c in cache.items()}
    # Left padding puts every row's last real token in the last column: project only that one.
    logits = model.apply({"params": params}, hidden[:, -1:], method=LlavaModel.logits_from_hidden)[:, 0]
    return logits, cache, positions[:, -1] + 1


@functools.partial(jax.jit, static_argnames=("num_new", "mode", "keep_logits"), donate_argnames=("cache",))
def first_token(
    logits,
    cache,
    position,
    seed_key,
    temperature,
    top_p,
    stop_ids,
    pad_id,
    *,
    num_new: int,
    mode: SamplingMode,
    keep_logits: bool,
):
    """Choose token 0 from the prefill logits; returns the decode state with `step` = 1.

    Args:
      logits: float32[B, V]; cache, position: from `prefill`.
      stop_ids: int32[K] ids that end a row; pad_id: int32[] filler after a row ends.
    """
    b = logits.shape[0]
    token = sample_tokens(logits, _step_key(seed_key, 0), temperature, top_p, mode)
    state = {
        "cache": cache,
        "token": token,
        "position": position,
        "done": jnp.isin(token, stop_ids),
        "out": jnp.full((b, num_new), pad_id, jnp.int32).at[:, 0].set(token),
        "step": jnp.int32(1),
    }
    if keep_logits:
        state["logits"] = jnp.zeros((b, num_new, logits.shape[-1]), jnp.float32).at[:, 0].set(logits)
    return state


def _embed_generated(params, token, config: LlavaConfig):
    """float[B, 1, D] embeddings of generated int32[B] tokens.

    Looked up directly, never merged with images: a generated id equal to
    `image_token_index` (in the vocabulary for llava-hf checkpoints) is embedded
    as a token, as HF does in its decode steps.
    """
    return LlamaModel(config.llm).apply({"params": params["llm"]}, token[:, None], method=LlamaModel.embed)


def _unrolled_step(params, layers, token, position, slot_mask, cache, cache_index, config: LlavaConfig):
    """One decode step over per-layer buffers: (float32[B, V] logits, new per-layer cache)."""
    c = config.llm
    x = _embed_generated(params, token, config)
    positions = position[:, None]
    max_pos = positions.max() if c.rope_scaling.rope_type == "dynamic" else None
    inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling, c.max_position_embeddings, max_pos)
    cos, sin = rope_cos_sin(positions, inv_freq, dtype_of(c.dtype))
    layer = LlamaDecoderLayer(c, decode=True)
    new_k, new_v = [], []
    for i, lp in enumerate(layers):
        x, (k, v) = layer.apply(
            {"params": lp}, x, cos, sin, None, slot_mask, cache_index, (cache["k"][i], cache["v"][i])
        )
        new_k.append(k)
        new_v.append(v)
    logits = LlamaModel(c).apply({"params": params["llm"]}, x, method=lambda m, h: m.logits(m.norm(h)))
    return logits[:, 0], {"k": tuple(new_k), "v": tuple(new_v)}


@functools.partial(jax.jit, static_argnames=("config", "mode"), donate_argnames=("state",))
def decode(
    params,
    layers,
    state,
    limit,
    prompt_mask,
    seed_key,
    temperature,
    top_p,
    stop_ids,
    pad_id,
    *,
    config: LlavaConfig,
    mode: SamplingMode,
):
    """Append tokens until `state['step'] == limit` or every row is done, in one `lax.while_loop`.

    Args:
      layers: `UnrolledLayers.layers` for the unrolled layout, None for the scanned one.
      state: from `first_token` or an earlier `decode` (donated).
      limit: int32[] step to stop at (traced: chunked calls share one compilation).
      prompt_mask: bool[B, T] real prompt tokens.
    """
    t = prompt_mask.shape[1]
    cache_len = jax.tree.leaves(state["cache"])[0].shape[-2]  # [.., K, S, H]
    # Slots past the prompt are written in order; the model hides those not yet written.
    slot_mask = jnp.concatenate([prompt_mask, jnp.ones((prompt_mask.shape[0], cache_len - t), bool)], axis=1)
    scanned = LlamaModel(config.llm, decode=True)

    def cond(s):
        return (s["step"] < limit) & ~jnp.all(s["done"])

    def body(s):
        step = s["step"]
        if layers is None:
            logits, cache = scanned.apply(
                {"params": params["llm"]},
                _embed_generated(params, s["token"], config),
                s["position"][:, None],
                padding_mask=slot_mask,
                cache=s["cache"],
                cache_index=t + step - 1,
            )
            logits = logits[:, 0]
        else:
            logits, cache = _unrolled_step(
                params, layers, s["token"], s["position"], slot_mask, s["cache"], t + step - 1, config
            )
        token = sample_tokens(logits, _step_key(seed_key, step), temperature, top_p, mode)
        token = jnp.where(s["done"], pad_id, token)
        new = {
            "cache": cache,
            "token": token,
            "position": s["position"] + 1,
            "done": s["done"] | jnp.isin(token, stop_ids),
            "out": jax.lax.dynamic_update_slice(s["out"], token[:, None], (0, step)),
            "step": step + 1,
        }
        if "logits" in s:
            new["logits"] = jax.lax.dynamic_update_slice(s["logits"], logits[:, None], (0, step, 0))
        return new

    return jax.lax.while_loop(cond, body, state)
