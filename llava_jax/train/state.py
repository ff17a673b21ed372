"""The one builder of the training model config and train state, shared by the trainer and the planner.

`model_config` applies an experiment's model overrides (attention, remat,
dtypes, LoRA) to a base config; `optimizer_for` builds the optimizer of the
recipe; `abstract_state` and `state_shardings` describe the state without
weights (the planner compiles against them); `init_state` makes the real one,
placed exactly as `state_shardings` says.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from llava_jax.config import LlavaConfig
from llava_jax.model.lora import with_lora
from llava_jax.model.params import abstract_params, param_logical_axes
from llava_jax.sharding import DEFAULT_RULES, Rules, tree_shardings
from llava_jax.train.optim import OptimConfig, make_optimizer
from llava_jax.train.partition import path_str, split
from llava_jax.train.step import TrainState


def model_config(cfg, base: LlavaConfig) -> LlavaConfig:
    """The model config the trainer runs: `cfg.model`'s image mode (anyres for LLaVA-1.5-HD), attention,
    remat and compute dtype (float32 master weights), and `cfg.lora`'s adapters, applied to `base`."""
    m = cfg.model
    aspect = m.get("image_aspect_ratio", "")
    if aspect:
        anyres = aspect == "anyres"
        base = dataclasses.replace(
            base,
            image_aspect_ratio=aspect,
            image_grid_pinpoints=tuple(tuple(p) for p in m.image_grid_pinpoints) if anyres else (),
            patch_merge_type=m.patch_merge_type if anyres else "flat",
        )
    config = base.with_attention(m.attention_impl)
    config = dataclasses.replace(config, llm=dataclasses.replace(config.llm, remat_policy=m.remat_policy))
    config = config.with_dtype(m.dtype, "float32")
    if cfg.lora.rank:
        config = with_lora(config, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout)
    return config


def optimizer_for(cfg, total_steps: int, trainable) -> tuple:
    """(optax transformation, lr schedule) of `cfg.optim` for the `trainable` tree (arrays or shapes).

    With LoRA the projector keeps its own peak rate (`cfg.lora.projector_lr`).
    """
    part_lrs = ((r"^projector/", cfg.lora.projector_lr),) if cfg.lora.rank else ()
    return make_optimizer(
        OptimConfig(**{k: cfg.optim[k] for k in cfg.optim}, part_lrs=part_lrs), total_steps, trainable
    )


def _frozen_dtype(cfg, leaf):
    dtype = jnp.dtype(cfg.model.frozen_dtype)
    return dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf.dtype


def abstract_state(cfg, config: LlavaConfig, total_steps: int = 1000) -> tuple[TrainState, object, object]:
    """(TrainState of `jax.ShapeDtypeStruct`s, optimizer, lr schedule): the state `init_state` makes, unplaced."""
    trainable, frozen = split(abstract_params(config), list(cfg.trainable))
    frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, _frozen_dtype(cfg, x)), frozen)
    optimizer, lr_fn = optimizer_for(cfg, total_steps, trainable)
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=trainable,
        frozen=frozen,
        opt_state=jax.eval_shape(optimizer.init, trainable),
        rng=jax.eval_shape(jax.random.PRNGKey, 0),
    )
    return state, optimizer, lr_fn


def _opt_shardings(opt_state, trainable_shardings, mesh):
    """Optimizer leaves take the sharding of the parameter they shadow (path suffix); scalars replicate."""
    by_path = {path_str(p): s for p, s in jax.tree_util.tree_leaves_with_path(trainable_shardings)}
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(keypath, leaf):
        path = path_str(keypath)
        for name, sharding in by_path.items():
            if (path == name or path.endswith("/" + name)) and len(sharding.spec) <= len(leaf.shape):
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(pick, opt_state)


def state_shardings(cfg, config: LlavaConfig, mesh, state: TrainState, rules: Rules = DEFAULT_RULES) -> TrainState:
    """TrainState of `NamedSharding`s on `mesh` (abstract or real) for `state` (from `abstract_state`)."""
    every = tree_shardings(param_logical_axes(config), abstract_params(config), mesh, rules)
    trainable, frozen = split(every, list(cfg.trainable))
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(
        step=replicated,
        params=trainable,
        frozen=frozen,
        opt_state=_opt_shardings(state.opt_state, trainable, mesh),
        rng=replicated,
    )


def init_state(cfg, config: LlavaConfig, params: dict, optimizer, mesh, rules: Rules = DEFAULT_RULES) -> TrainState:
    """The fresh train state from full `params`: trainable float32, frozen cast to `cfg.model.frozen_dtype`,
    the optimizer initialised in place; every leaf placed as `state_shardings` says."""
    trainable, frozen = split(params, list(cfg.trainable))
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=trainable,
        frozen=frozen,
        opt_state=jax.eval_shape(optimizer.init, trainable),
        rng=jax.eval_shape(jax.random.PRNGKey, 0),
    )
    shardings = state_shardings(cfg, config, mesh, abstract, rules)
    frozen = jax.tree.map(lambda x: x if x.dtype == _frozen_dtype(cfg, x) else x.astype(_frozen_dtype(cfg, x)), frozen)
    return TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
        params=jax.device_put(trainable, shardings.params),
        frozen=jax.device_put(frozen, shardings.frozen),
        opt_state=jax.jit(optimizer.init, out_shardings=shardings.opt_state)(trainable),
        rng=jax.device_put(jax.random.PRNGKey(cfg.seed), shardings.rng),
    )
