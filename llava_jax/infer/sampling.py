"""Next-token choice: greedy, or seeded sampling with temperature, top-k and top-p.

Letters: B batch rows, V vocab, C candidate tokens (V, or k after top-k).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingMode:
    """The static (shape-deciding) part of the sampling settings; temperature and top_p are traced."""

    greedy: bool = True
    top_k: int = 0
    use_top_p: bool = False

    @classmethod
    def of(cls, temperature: float, top_k: int, top_p: float) -> SamplingMode:
        """Greedy when `temperature` is 0 (top-k/top-p then ignored, as in HF)."""
        if temperature == 0:
            return cls()
        return cls(greedy=False, top_k=int(top_k), use_top_p=top_p < 1.0)


def filter_top_p(logits, top_p):
    """Mask float32[B, C] logits outside the smallest set whose probability exceeds `top_p`.

    HF's `TopPLogitsWarper` rule, in its arithmetic (ascending sort, cumulative
    sum, drop while it stays <= 1 - top_p): the most likely token always stays.
    """
    order = jnp.argsort(logits, axis=-1)
    probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
    drop_sorted = jnp.cumsum(probs, axis=-1) <= 1 - top_p
    drop_sorted = drop_sorted.at[:, -1].set(False)
    rows = jnp.arange(logits.shape[0])[:, None]
    drop = jnp.zeros_like(drop_sorted).at[rows, order].set(drop_sorted)
    return jnp.where(drop, -jnp.inf, logits)


def sample_tokens(logits, key, temperature, top_p, mode: SamplingMode):
    """Next tokens int32[B] from float32[B, V] logits.

    Greedy (argmax) when `mode.greedy`; otherwise temperature, then top-k, then
    top-p (HF's order) and a categorical draw with the key `fold_in(key, row)`,
    so a row's draw does not depend on how many rows the batch has.
    """
    if mode.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    candidates = None
    if mode.top_k > 0:
        # The k best only: cheaper than sorting the whole vocabulary every step.
        logits, candidates = jax.lax.top_k(logits, min(mode.top_k, logits.shape[-1]))
    if mode.use_top_p:
        logits = filter_top_p(logits, top_p)
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(logits.shape[0]))
    choice = jax.vmap(jax.random.categorical)(keys, logits)
    if candidates is not None:
        choice = jnp.take_along_axis(candidates, choice[:, None], axis=-1)[:, 0]
    return choice.astype(jnp.int32)
