"""LoRA adapters on the LLM's linear layers: adding fresh adapters and merging them into the weights."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llava_jax.config import LlavaConfig

LORA_KEYS = ("lora_a", "lora_b")


def with_lora(config: LlavaConfig, rank: int, alpha: float, dropout: float = 0.0) -> LlavaConfig:
    """`config` with LoRA adapters of `rank` / `alpha` (adapter-input `dropout`) on every LLM projection."""
    return dataclasses.replace(
        config, llm=dataclasses.replace(config.llm, lora_rank=rank, lora_alpha=alpha, lora_dropout=dropout)
    )


def add_lora(params: dict, config: LlavaConfig, rng) -> dict:
    """`params` (of the plain model) plus freshly initialised adapters for `config` (which has LoRA)."""
    from llava_jax.model.params import init_params

    fresh = init_params(config, rng)

    def graft(base, new):
        if not isinstance(new, dict):
            return base
        out = {k: graft(base[k], v) if k in base else v for k, v in new.items()}
        return out

    return graft(params, fresh)


def merge_lora(params: dict, config: LlavaConfig) -> tuple[dict, LlavaConfig]:
    """Fold every adapter into its kernel: W + (alpha / rank) * A @ B.

    Returns plain parameters and the config without LoRA, loadable and exportable
    like any checkpoint.
    """
    c = config.llm
    if not c.lora_rank:
        return params, config
    scale = c.lora_alpha / c.lora_rank

    def merge(node):
        if not isinstance(node, dict):
            return node
        if "lora_a" in node:
            kernel, a, b = node["kernel"], node["lora_a"], node["lora_b"]
            # Stacked over layers: a [L, *in, r], b [L, r, *out].
            delta = jax.vmap(lambda x, y: jnp.tensordot(x, y, axes=1))(a.astype(jnp.float32), b.astype(jnp.float32))
            merged = {k: v for k, v in node.items() if k not in LORA_KEYS}
            merged["kernel"] = (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)
            return merged
        return {k: merge(v) for k, v in node.items()}

    return merge(params), with_lora(config, 0, 0.0)
