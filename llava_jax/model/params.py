"""Parameter trees of `LlavaModel` as plain pytrees: abstract shapes, logical axes, sharded init."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from llava_jax.config import LlavaConfig
from llava_jax.model.llava import LlavaModel
from llava_jax.sharding import DEFAULT_RULES, Rules, logical_axes_of, tree_shardings


def _dummy_inputs(config: LlavaConfig):
    s = config.vision.image_size
    ids = jnp.zeros((1, 4), jnp.int32)
    tiles = (config.anyres.max_tiles,) if config.anyres else ()
    images = jnp.zeros((1, 1) + tiles + (s, s, config.vision.num_channels), jnp.float32)
    grids = jnp.zeros((1, 1, 6), jnp.int32) if config.anyres else None
    return ids, images, grids


def _boxed_init(config: LlavaConfig, rng):
    ids, images, grids = _dummy_inputs(config)
    return LlavaModel(config).init(rng, ids, images, image_grids=grids)["params"]


@functools.lru_cache(maxsize=16)
def _abstract_boxed_cached(config: LlavaConfig):
    return jax.eval_shape(lambda r: _boxed_init(config, r), jax.random.PRNGKey(0))


def abstract_boxed(config: LlavaConfig):
    """Shape-only parameter tree with `nn.LogicallyPartitioned` boxes (no compute).

    Traced once per config (a trace of the whole model's init, ~0.35 s for the tiny
    model): the trainer asks for the shapes, the logical axes and the shardings. Each
    call returns its own copy of the containers.
    """
    return jax.tree.map(lambda x: x, _abstract_boxed_cached(config), is_leaf=lambda x: isinstance(x, nn.Partitioned))


def abstract_params(config: LlavaConfig):
    """Tree of `jax.ShapeDtypeStruct` for every parameter (no compute, any model size)."""
    return nn.meta.unbox(abstract_boxed(config))


def param_logical_axes(config: LlavaConfig):
    """Tree (same structure as the params) of logical axis-name tuples."""
    return logical_axes_of(abstract_boxed(config))


def param_shardings(config: LlavaConfig, mesh, rules: Rules = DEFAULT_RULES):
    """Tree of `NamedSharding` placing each parameter as `rules` say on `mesh`."""
    return tree_shardings(param_logical_axes(config), abstract_params(config), mesh, rules)


def init_params(config: LlavaConfig, rng=None, mesh=None, rules: Rules = DEFAULT_RULES):
    """Randomly initialised parameters (plain pytree), created sharded when `mesh` is given."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    init = lambda r: nn.meta.unbox(_boxed_init(config, r))
    if mesh is None:
        return jax.jit(init)(rng)
    return jax.jit(init, out_shardings=param_shardings(config, mesh, rules))(rng)


def count_params(tree) -> int:
    """Total number of elements in a parameter (or abstract) tree."""
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def merge_trees(a: dict, b: dict) -> dict:
    """Union of two nested dicts with disjoint leaves (a new dict; raises ValueError on a shared leaf)."""
    out = dict(a)
    for key, value in b.items():
        if key in out:
            if not (isinstance(out[key], dict) and isinstance(value, dict)):
                raise ValueError(f"parameter {key!r} is in both trees")
            out[key] = merge_trees(out[key], value)
        else:
            out[key] = value
    return out
