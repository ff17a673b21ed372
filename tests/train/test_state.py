"""The one state builder: the trainer's real state is placed exactly as the planner's abstract one says."""

import os

import jax
import jax.numpy as jnp
import pytest

from llava_jax.model.params import init_params
from llava_jax.presets import tiny
from llava_jax.sharding import make_mesh
from llava_jax.train import plan as planning
from llava_jax.train.experiment import load_config
from llava_jax.train.state import abstract_state, init_state, model_config, state_shardings

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "tiny.py")


@pytest.mark.parametrize("stage, frozen_dtype", [("pretrain", "bfloat16"), ("finetune", "float32")])
def test_real_state_matches_the_abstract_one(stage, frozen_dtype):
    cfg = load_config(f"{TINY}:{stage}", [f"--config.model.frozen_dtype={frozen_dtype}"])
    config = model_config(cfg, tiny(vocab_size=128, num_kv_heads=4))
    mesh = make_mesh((2, 2, 2))
    abstract, optimizer, _ = abstract_state(cfg, config, total_steps=10)
    want = state_shardings(cfg, config, mesh, abstract)
    state = init_state(cfg, config, init_params(config, jax.random.PRNGKey(0)), optimizer, mesh)
    real = jax.tree.structure(state)
    assert real == jax.tree.structure(abstract)
    for got, shape, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(abstract), jax.tree.leaves(want)):
        assert (got.shape, got.dtype) == (shape.shape, shape.dtype)
        assert got.sharding.is_equivalent_to(sharding, got.ndim), (got.sharding, sharding)
    frozen = jax.tree.leaves(state.frozen)
    assert frozen and all(x.dtype == jnp.dtype(frozen_dtype) for x in frozen)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    # What the planner counts per device is what device 0 really holds.
    on_device0 = lambda tree: sum(
        s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == jax.devices()[0]
    )
    assert planning.per_device_bytes(abstract.opt_state, want.opt_state) == on_device0(state.opt_state)
    assert planning.per_device_bytes(abstract.params, want.params) == on_device0(state.params)
