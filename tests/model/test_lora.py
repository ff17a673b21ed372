"""LoRA adapters: start at the base model, merge into plain weights exactly, train alone."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llava_jax.model.llava import LlavaModel
from llava_jax.model.lora import add_lora, merge_lora, with_lora
from llava_jax.model.params import init_params
from llava_jax.presets import tiny
from llava_jax.train.partition import split


def _inputs(config):
    ids = jnp.array([[1, 5, 6] + [config.image_token_index] * config.image_seq_length + [7, 8, 9]])
    return ids, jnp.ones((1, 1, 28, 28, 3))


@functools.partial(jax.jit, static_argnums=0)
def _logits(config, params, ids, images):
    """One compile per config (eager, the three forwards took 6 s of CPU)."""
    return LlavaModel(config).apply({"params": params}, ids, images)[0]


def test_adapters_start_at_the_base_model_and_merge_exactly():
    base_cfg = tiny()
    base = init_params(base_cfg)
    cfg = with_lora(base_cfg, rank=4, alpha=8.0, dropout=0.05)
    params = add_lora(base, cfg, jax.random.PRNGKey(1))
    ids, images = _inputs(cfg)
    ref = _logits(base_cfg, base, ids, images)
    out = _logits(cfg, params, ids, images)
    np.testing.assert_allclose(out, ref, atol=1e-6)  # B = 0 at the start
    # Trained adapters: merged weights give the adapted model's logits.
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: (
            x + 0.05 * jax.random.normal(jax.random.PRNGKey(len(str(p))), x.shape)
            if "lora_b" in jax.tree_util.keystr(p)
            else x
        ),
        params,
    )
    adapted = _logits(cfg, params, ids, images)
    merged, merged_cfg = merge_lora(params, cfg)
    assert merged_cfg.llm.lora_rank == 0
    assert jax.tree.structure(merged) == jax.tree.structure(base)
    out = _logits(merged_cfg, merged, ids, images)
    np.testing.assert_allclose(out, adapted, atol=1e-5)
    assert np.abs(np.asarray(adapted) - np.asarray(ref)).max() > 1e-3


def test_lora_recipe_trains_only_adapters_and_projector():
    cfg = with_lora(tiny(), rank=4, alpha=8.0)
    trainable, frozen = split(init_params(cfg), ["^projector/", "lora_[ab]$"])
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(trainable)]
    assert all("lora_" in p or "projector" in p for p in paths)
    assert sum("lora_a" in p for p in paths) == 7  # q k v o gate up down, stacked over layers
    assert "vision" in frozen and "lm_head" in frozen["llm"]
