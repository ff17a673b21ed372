"""Autoregressive generation with a static-shape KV cache.

Letters: B batch rows, T prompt length (left padded), S cache length (T + N),
N max new tokens, V vocab, K stop ids.

Prefill runs the whole prompt once (images encoded inside), writes cache
slots [0, T) and samples the first token from the last position. Decoding is
a jitted `lax.while_loop` that appends one token per iteration at slot
`T + i - 1` until every row has stopped or the step limit is reached; no
Python runs per token. Stop strings and streaming need the tokenizer on the
host, so they run the same loop in short chunks (the loop's limit is a traced
argument: chunks never recompile) and look at the text between chunks.

Left padding follows HF `generate`: positions are `cumsum(mask) - 1` and
padded cache slots are masked, so a row's tokens do not depend on the other
rows of the batch. After a row stops (EOS, stop id or stop string, the stop
token included) it emits `pad_token_id`, and the output has as many columns
as the longest row needed, as HF returns.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llava_jax.config import LlavaConfig
from llava_jax.infer.decode import (
    decode,
    decode_layers_for,
    first_token,
    prefill,
    resolve_layout,
)
from llava_jax.infer.sampling import SamplingMode
from llava_jax.model.inputs import model_images
from llava_jax.sharding import mesh_context

StreamCallback = Callable[[list], None]
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


# ------------------------------------------------------------------------------------ host side
def _as_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    return tuple(int(v) for v in value)


def default_stop_ids(model) -> tuple[int, ...]:
    """EOS ids of the model: the LLM config's and the tokenizer's (deduplicated)."""
    ids = list(_as_ids(model.config.llm.eos_token_id))
    tok = getattr(model, "tokenizer", None)
    if tok is not None and getattr(tok, "eos_token_id", None) is not None:
        ids.append(int(tok.eos_token_id))
    return tuple(dict.fromkeys(ids))


def _check_lengths(config: LlavaConfig, mask: np.ndarray, max_new_tokens: int, cache_len: int | None):
    context = config.llm.max_position_embeddings
    t = mask.shape[1]
    longest = int(mask.sum(axis=1).max()) if mask.size else 0
    if longest == 0:
        raise ValueError("empty prompt: every row needs at least one token (attention_mask has no 1s)")
    if longest > context:
        raise ValueError(f"prompt of {longest} tokens is longer than the model's context of {context} tokens")
    if longest + max_new_tokens > context:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} would overflow the context: the prompt has {longest} "
            f"tokens and the model's context is {context} (at most {context - longest} new tokens)"
        )
    if cache_len is not None and t + max_new_tokens > cache_len:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} would overflow the KV cache: {t} prompt slots + "
            f"{max_new_tokens} new > max_len={cache_len} (at most {cache_len - t} new tokens)"
        )


def _left_pad(ids: np.ndarray, mask: np.ndarray, multiple: int, pad_id: int):
    """Add left padding so T is a multiple of `multiple` (fewer distinct shapes, fewer compiles)."""
    extra = (-ids.shape[1]) % multiple
    if not extra:
        return ids, mask
    b = ids.shape[0]
    return (
        np.concatenate([np.full((b, extra), pad_id, ids.dtype), ids], axis=1),
        np.concatenate([np.zeros((b, extra), bool), mask], axis=1),
    )


class _TextWatcher:
    """Host-side text of each row: finds stop strings and produces stream deltas."""

    def __init__(self, tokenizer, batch: int, stop_strings: Sequence[str], stop_ids: set[int]):
        self.tok = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.stop_ids = stop_ids
        self.emitted = [""] * batch
        self.stopped_at: dict[int, int] = {}  # row -> number of tokens kept

    def text(self, tokens) -> str:
        return self.tok.decode([int(t) for t in tokens if int(t) not in self.stop_ids], skip_special_tokens=True)

    def scan(self, row: int, tokens: np.ndarray, start: int, end: int) -> None:
        """Look for a stop string ending at each token in [start, end) of a still-running row."""
        if not self.stop_strings or row in self.stopped_at:
            return
        for k in range(max(start, 1), end + 1):
            if any(s in self.text(tokens[:k]) for s in self.stop_strings):
                self.stopped_at[row] = k
                return

    def _settled(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens whose text is final: a trailing run of byte-fallback pieces (`<0xE2>`) may still
        change, since an invalid UTF-8 run decodes to one U+FFFD per byte only once it is closed."""
        end = len(tokens)
        while end and _BYTE_PIECE.fullmatch(str(self.tok.convert_ids_to_tokens(int(tokens[end - 1]))) or ""):
            end -= 1
        return tokens[:end]

    def delta(self, row: int, tokens: np.ndarray, final: bool) -> str:
        """New text of a row since the last call; unless `final`, holds back text that may still
        change: open byte runs, incomplete UTF-8 (U+FFFD at the end) and a partial stop string."""
        text = self.text(tokens)
        for s in self.stop_strings:
            if s in text:
                text, final = text[: text.index(s)], True
        if not final:
            text = self.text(self._settled(tokens)).rstrip("\ufffd")
            for s in self.stop_strings:
                for n in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:n]):
                        text = text[:-n]
                        break
        old = self.emitted[row]
        if len(text) <= len(old):
            return ""
        # Text only grows at the end; should detokenisation still rewrite earlier text, the
        # already-printed part is not repeated.
        self.emitted[row] = text
        return text[len(old) :]


def generate(
    model,
    input_ids,
    pixel_values=None,
    attention_mask=None,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    stop_token_ids: Sequence[int] = (),
    stop_strings: Sequence[str] = (),
    pad_token_id: int | None = None,
    max_len: int | None = None,
    pad_to_multiple: int = 1,
    stream: StreamCallback | None = None,
    chunk_size: int | None = None,
    layout: str = "auto",
    return_logits: bool = False,
    timings: dict | None = None,
    image_sizes=None,
):
    """Generate new tokens for HF-processor style inputs.

    Args:
      model: a loaded `llava_jax.Llava` (config, params, tokenizer, mesh).
      input_ids: int[B, T] prompts, left padded, `image_seq_length` placeholders per image
        (anyres: `config.image_tokens(h, w)` per image).
      pixel_values: float[N, 3, S, S] channels-first images in row order, or None; anyres:
        float[N, K, 3, S, S] tiles or a list of float[k_i, 3, S, S] (as `LlavaNextProcessor` gives).
      attention_mask: int/bool[B, T], 1 for real tokens (default all ones). Right padding is rejected.
      max_new_tokens: N, the most tokens generated per row.
      temperature: 0 for greedy decoding, else the softmax temperature of sampling.
      top_p, top_k: nucleus / top-k filtering when sampling (1.0 / 0 disable them).
      seed: sampling seed; the same seed and inputs give the same tokens.
      eos_token_id: stop ids (default: the model's and its tokenizer's EOS); `()` disables EOS.
      stop_token_ids: more ids that end a row (included in the output, like EOS).
      stop_strings: texts that end a row once its decoded new text contains one (needs the tokenizer);
        the token completing the string is the row's last.
      pad_token_id: filler after a row stops (default the LLM's pad id, else the first EOS id, else 0).
      max_len: KV cache length S (default T + max_new_tokens); too small raises.
      pad_to_multiple: left-pad T to a multiple of this, so varying prompts share compiled shapes.
      stream: called with a list of B text deltas as tokens arrive (needs the tokenizer).
      chunk_size: tokens per jitted loop call when streaming or checking stop strings (default 1 / 8);
        given alone, decodes in chunks anyway (same tokens, for tests).
      layout: decoder weight/cache layout, `scan`, `unrolled` or `auto` (unrolled when its weight
        copy fits); see `llava_jax.infer.decode`.
      return_logits: also return the logits that chose each token.
      timings: a dict to fill with `prefill_s` (to the first token, on the host), `decode_s`, `steps`.
      image_sizes: anyres only, int[N, 2] original (height, width) of each image.
    Returns:
      int32[B, N'] new tokens (N' <= N, the steps the longest row needed), and with
      `return_logits` also float32[B, N', V].
    Raises:
      ValueError for inconsistent images/placeholders, prompts longer than the context and
      `max_new_tokens` that would overflow the context or the cache.
    """
    config: LlavaConfig = model.config
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {ids.shape}")
    ids = ids.astype(np.int32)
    mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if mask.ndim == 1:
        mask = mask[None]
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    if mask.size and not mask[:, -1].all():
        raise ValueError(
            "attention_mask ends with padding in some row: use left padding for generation "
            "(tokenizer.padding_side = 'left')"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    vocab = config.llm.vocab_size
    text_ids = ids[mask & (ids != config.image_token_index)]
    if text_ids.size and (text_ids.min() < 0 or text_ids.max() >= vocab):
        raise ValueError(f"input_ids hold ids outside the vocabulary [0, {vocab})")
    images, grids = model_images(ids, pixel_values, image_sizes, config)
    stop_ids = tuple(
        dict.fromkeys(
            (default_stop_ids(model) if eos_token_id is None else _as_ids(eos_token_id)) + _as_ids(stop_token_ids)
        )
    )
    if pad_token_id is None:
        pad_token_id = config.llm.pad_token_id
    if pad_token_id is None:
        pad_token_id = stop_ids[0] if stop_ids else 0
    tokenizer = getattr(model, "tokenizer", None)
    if (stream is not None or stop_strings) and tokenizer is None:
        raise ValueError("streaming and stop_strings need the model's tokenizer (model.tokenizer is None)")
    stop_strings = tuple(s for s in (stop_strings or ()) if s)

    ids, mask = _left_pad(ids, mask, max(1, pad_to_multiple), pad_token_id)
    _check_lengths(config, mask, max_new_tokens, max_len)
    b, t = ids.shape
    cache_len = t + max_new_tokens if max_len is None else max_len
    mode = SamplingMode.of(temperature, top_k, top_p)
    unrolled = resolve_layout(layout, model) == "unrolled"
    consts = {
        "seed_key": jax.random.PRNGKey(seed),
        "temperature": jnp.float32(temperature or 1.0),
        "top_p": jnp.float32(top_p),
        "stop_ids": jnp.asarray(stop_ids or (-1,), jnp.int32),
        "pad_id": jnp.int32(pad_token_id),
    }
    start = time.perf_counter()
    with mesh_context(model.mesh, model.rules):
        layers = decode_layers_for(model).layers if unrolled else None
        logits, cache, position = prefill(
            model.params, ids, images, mask, grids, config=config, cache_len=cache_len, unrolled=unrolled
        )
        state = first_token(
            logits, cache, position, **consts, num_new=max_new_tokens, mode=mode, keep_logits=return_logits
        )
        if timings is not None:
            jax.block_until_ready(state["token"])
            timings["prefill_s"] = time.perf_counter() - start
        run = functools.partial(
            decode, model.params, layers, prompt_mask=jnp.asarray(mask), **consts, config=config, mode=mode
        )
        if stream is None and not stop_strings and chunk_size is None:
            state = run(state, jnp.int32(max_new_tokens))
            watcher = None
        else:
            state, watcher = _chunked(
                run,
                state,
                max_new_tokens,
                chunk_size or (1 if stream else 8),
                _TextWatcher(tokenizer, b, stop_strings, set(stop_ids)),
                stream,
            )
    out = np.asarray(jax.device_get(state["out"]))
    steps = int(state["step"])
    if timings is not None:
        timings["decode_s"] = time.perf_counter() - start - timings["prefill_s"]
        timings["steps"] = steps
    lengths = _row_lengths(out[:, :steps], set(stop_ids), watcher)
    n = int(lengths.max())
    out = out[:, :n].copy()
    for row, length in enumerate(lengths):
        out[row, length:] = pad_token_id
    if return_logits:
        return out, np.asarray(jax.device_get(state["logits"]))[:, :n]
    return out


def _chunked(run, state, max_new_tokens: int, chunk: int, watcher: _TextWatcher, stream):
    """Decode in chunks of `chunk` tokens, checking stop strings and streaming text in between."""
    checked = 1
    while True:
        out = np.asarray(jax.device_get(state["out"]))
        done = np.asarray(jax.device_get(state["done"]))
        steps = int(state["step"])
        for row in range(out.shape[0]):
            watcher.scan(row, out[row], checked, steps)
        if watcher.stopped_at:
            stopped = np.zeros_like(done)
            stopped[list(watcher.stopped_at)] = True
            done = done | stopped
            state = {**state, "done": jnp.asarray(done)}
        finished = steps >= max_new_tokens or bool(done.all())
        if stream is not None:
            deltas = [
                watcher.delta(
                    row, out[row, : watcher.stopped_at.get(row, steps)], final=finished or row in watcher.stopped_at
                )
                for row in range(out.shape[0])
            ]
            if any(deltas):
                stream(deltas)
        if finished:
            return state, watcher
        checked = steps + 1
        state = run(state, jnp.int32(min(steps + chunk, max_new_tokens)))


def _row_lengths(out: np.ndarray, stop_ids: set[int], watcher: _TextWatcher | None) -> np.ndarray:
    """Tokens kept per row: through the first stop id or stop string, else all steps run."""
    lengths = np.full(out.shape[0], out.shape[1], np.int64)
    for row in range(out.shape[0]):
        hits = np.nonzero(np.isin(out[row], list(stop_ids)))[0] if stop_ids else []
        if len(hits):
            lengths[row] = hits[0] + 1
        if watcher is not None and row in watcher.stopped_at:
            lengths[row] = min(lengths[row], watcher.stopped_at[row])
    return lengths
