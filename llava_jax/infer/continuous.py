"""Device side of continuous batching: a decode state whose rows each have their own cache slots.

Letters: B rows of the state, C cache slots per row (also the output columns),
b prompts being admitted, T their left-padded prompt length, V vocab, L layers,
K key/value heads, H head dim.

In `llava_jax.infer.decode` the rows of a batch start together and share one
cache index. Here every row carries its own write slot, RoPE position, token
count and slot mask, so rows start and end at different steps of one running
state: `admit` puts prefilled prompts (`llava_jax.infer.decode.prefill` with
`cache_len=T`) into free rows and picks their first tokens, `decode_rows`
appends one token to every live row per step, and a row is free again once it
is `done` (`end_rows` marks rows done for reasons only the host sees: a stop
string, a cancelled request). A row's tokens depend only on its own
prompt: positions are its own, and it attends only to its own slots, those of
its prompt's real tokens and those it wrote since.

The state is a dict of arrays:
- `cache`: {'k', 'v'} float[L, B, K, C, H] (scanned layout) or L-tuples of
  float[B, K, C, H] (unrolled layout; see `llava_jax.infer.decode`);
- `valid`: bool[B, C] slots a row may attend to once written (its prompt's real
  tokens, then every slot after the prompt);
- `token` int32[B] last token (fed next), `position` int32[B] its RoPE position,
  `index` int32[B] the cache slot it is written to;
- `count` int32[B] tokens made, `budget` int32[B] most tokens the row may make,
  `done` bool[B] (free rows are done), `out` int32[B, C] the tokens (row r's are
  `out[r, :count[r]]`);
- `tick` int32[] sampling steps taken (the sampling key of a step).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llava_jax.config import LlavaConfig
from llava_jax.infer.decode import _embed_generated, _unrolled_step
from llava_jax.infer.sampling import SamplingMode, sample_tokens
from llava_jax.model.llama import LlamaModel, init_cache


@functools.partial(jax.jit, static_argnames=("config", "rows", "cache_len", "unrolled"))
def empty_rows(*, config: LlavaConfig, rows: int, cache_len: int, unrolled: bool) -> dict:
    """A state of `rows` free rows (B) with `cache_len` slots each (C); see the module docstring."""
    cache = init_cache(config.llm, rows, cache_len)
    if unrolled:
        cache = {name: tuple(c[i] for i in range(c.shape[0])) for name, c in cache.items()}
    zeros = jnp.zeros((rows,), jnp.int32)
    return {
        "cache": cache,
        "valid": jnp.zeros((rows, cache_len), bool),
        "token": zeros,
        "position": zeros,
        "index": zeros,
        "count": zeros,
        "budget": zeros,
        "done": jnp.ones((rows,), bool),
        "out": jnp.zeros((rows, cache_len), jnp.int32),
        "tick": jnp.int32(0),
    }


def _pad(x, widths: dict, value=0):
    pads = [(0, widths.get(axis, 0)) for axis in range(x.ndim)]
    return jnp.pad(x, pads, constant_values=value)


@functools.partial(jax.jit, static_argnames=("rows", "cache_len"))
def resize_rows(state: dict, *, rows: int, cache_len: int) -> dict:
    """The state with B grown to `rows` (new rows free) and C grown to `cache_len`; live rows go on as they were."""
    b, c = state["valid"].shape
    if rows < b or cache_len < c:
        raise ValueError(f"resize_rows only grows: [{b}, {c}] -> [{rows}, {cache_len}]")
    db, dc = rows - b, cache_len - c
    # Cache leaves end in [B, K, C, H] in both layouts.
    cache = jax.tree.map(lambda x: _pad(x, {x.ndim - 4: db, x.ndim - 2: dc}), state["cache"])
    new = {name: _pad(state[name], {0: db}) for name in ("token", "position", "index", "count", "budget")}
    return {
        **new,
        "cache": cache,
        "valid": _pad(state["valid"], {0: db, 1: dc}, False),
        "done": _pad(state["done"], {0: db}, True),
        "out": _pad(state["out"], {0: db, 1: dc}),
        "tick": state["tick"],
    }


def _put_prompt(old, new, rows):
    """Write a prefilled cache float[..., b, K, T, H] into slots [0, T) of rows `rows` of float[..., B, K, C, H]."""
    t = new.shape[-2]
    if old.ndim == 5:  # scanned layout: [L, B, K, C, H]
        return old.at[:, rows, :, :t].set(new.astype(old.dtype), mode="drop")
    return old.at[rows, :, :t].set(new.astype(old.dtype), mode="drop")


@functools.partial(jax.jit, static_argnames=("mode",), donate_argnames=("state",))
def admit(
    state: dict,
    logits,
    cache,
    position,
    prompt_mask,
    rows,
    budget,
    seed_key,
    temperature,
    top_p,
    stop_ids,
    *,
    mode: SamplingMode,
) -> dict:
    """Put b prefilled prompts into rows of `state` and choose their first tokens.

    Args:
      state: the running state (donated).
      logits, cache, position: `prefill`'s outputs for the b prompts, made with `cache_len=T`
        (float32[b, V]; cache in the state's layout with b rows and T slots; int32[b]).
      prompt_mask: bool[b, T] the prompts' real tokens.
      rows: int32[b] the free row each prompt goes to; B (out of range) for filler prompts,
        which are dropped.
      budget: int32[b] most tokens each row may make (>= 1; T + budget <= C).
      seed_key, temperature, top_p, stop_ids: as `llava_jax.infer.decode.first_token`.
    Returns:
      the state, the new rows live unless their first token ends them.
    """
    c = state["valid"].shape[1]
    t = prompt_mask.shape[1]
    token = sample_tokens(logits, jax.random.fold_in(seed_key, state["tick"]), temperature, top_p, mode)

    def put(name, value):
        return state[name].at[rows].set(value, mode="drop")

    valid = jnp.concatenate([prompt_mask, jnp.ones((prompt_mask.shape[0], c - t), bool)], axis=1)
    ones = jnp.ones_like(token)
    return {
        "cache": jax.tree.map(lambda old, new: _put_prompt(old, new, rows), state["cache"], cache),
        "valid": put("valid", valid),
        "token": put("token", token),
        "position": put("position", position),
        "index": put("index", t * ones),
        "count": put("count", ones),
        "budget": put("budget", budget),
        "done": put("done", jnp.isin(token, stop_ids) | (budget <= 1)),
        "out": state["out"].at[rows, 0].set(token, mode="drop"),
        "tick": state["tick"] + 1,
    }


@functools.partial(jax.jit, static_argnames=("config", "mode"), donate_argnames=("state",))
def decode_rows(
    params,
    layers,
    state: dict,
    steps,
    seed_key,
    temperature,
    top_p,
    stop_ids,
    *,
    config: LlavaConfig,
    mode: SamplingMode,
) -> tuple[dict, dict]:
    """Append a token to every live row per step, in one `lax.while_loop`.

    Stops after `steps` steps (int32[], traced: any chunk length shares one compilation),
    when every row is done, or as soon as a row that was live became done (EOS or its
    budget), so that the host can answer it and give its row to a waiting request.

    Args:
      layers: `UnrolledLayers.layers` for the unrolled layout, None for the scanned one.
      state: from `admit` or an earlier call (donated).
    Returns:
      (the state, a report): the report holds copies of the state's `out`, `count` and `done`
      and `taken` int32[] (steps run), which stay readable once the state is donated to the
      next call, so that the host may queue that call before reading this one's tokens.
    """
    b, n = state["out"].shape
    was_done = state["done"]
    scanned = LlamaModel(config.llm, decode=True)

    def cond(carry):
        i, s = carry
        return (i < steps) & ~jnp.all(s["done"]) & ~jnp.any(s["done"] & ~was_done)

    def body(carry):
        i, s = carry
        if layers is None:
            logits, cache = scanned.apply(
                {"params": params["llm"]},
                _embed_generated(params, s["token"], config),
                s["position"][:, None],
                padding_mask=s["valid"],
                cache=s["cache"],
                cache_index=s["index"],
            )
            logits = logits[:, 0]
        else:
            logits, cache = _unrolled_step(
                params, layers, s["token"], s["position"], s["valid"], s["cache"], s["index"], config
            )
        live = ~s["done"]
        token = sample_tokens(logits, jax.random.fold_in(seed_key, s["tick"]), temperature, top_p, mode)
        token = jnp.where(live, token, s["token"])
        count = s["count"] + live
        step = live.astype(jnp.int32)
        new = {
            **s,
            "cache": cache,
            "token": token,
            "position": s["position"] + step,
            "index": s["index"] + step,
            "count": count,
            "done": s["done"] | (live & (jnp.isin(token, stop_ids) | (count >= s["budget"]))),
            # A done row writes nowhere (column n is out of range and dropped).
            "out": s["out"].at[jnp.arange(b), jnp.where(live, s["count"], n)].set(token, mode="drop"),
            "tick": s["tick"] + 1,
        }
        return i + 1, new

    taken, state = jax.lax.while_loop(cond, body, (jnp.int32(0), state))
    report = {"out": state["out"], "count": state["count"], "done": state["done"], "taken": taken}
    return state, report


@functools.partial(jax.jit, donate_argnames=("state",))
def end_rows(state: dict, rows) -> dict:
    """The state with rows `rows` bool[B] done (ended by the host: a stop string, a cancelled request)."""
    return {**state, "done": state["done"] | rows}
