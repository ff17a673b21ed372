"""The train step: `train_step(state, batch) -> (state, metrics)`, gradients of trainable parameters only.

Frozen parameters ride in the state unchanged (no gradient, no optimizer
state); the loss is the summed token NLL over the global batch divided by the
number of supervised tokens in the global batch, so gradient accumulation over
micro-batches equals the large batch exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from llava_jax.config import LlavaConfig
from llava_jax.model.llava import LlavaModel
from llava_jax.model.params import merge_trees
from llava_jax.sharding import BATCH, activation_constraint
from llava_jax.train.loss import IGNORE_INDEX, chunked_cross_entropy, shifted_targets

BATCH_KEYS = ("input_ids", "labels", "positions", "segment_ids", "images", "image_grids")


class TrainState(flax.struct.PyTreeNode):
    """Everything a step reads and writes."""

    step: jax.Array  # int32[]
    params: Any  # trainable parameters (float32 master weights)
    frozen: Any  # frozen parameters, passed through unchanged
    opt_state: Any
    rng: jax.Array


def batch_loss(trainable, frozen, batch, rng, *, config: LlavaConfig, freeze_vision: bool = True, chunk: int = 512):
    """(summed NLL, supervised tokens) of one (micro-)batch.

    batch: input_ids/labels/positions/segment_ids int32[B, T], images float32[B, M, S, S, 3]
      (anyres: float32[B, M, K, S, S, 3] tiles and image_grids int32[B, M, 6]).
    """
    model = LlavaModel(config, freeze_vision=freeze_vision)
    params = merge_trees(trainable, frozen)
    images = batch.get("images")
    if images is not None and images.shape[1] == 0:
        images = None
    hidden, _ = model.apply(
        {"params": params},
        batch["input_ids"],
        images,
        positions=batch["positions"],
        segment_ids=batch["segment_ids"],
        return_hidden=True,
        image_grids=batch.get("image_grids") if images is not None else None,
        rngs={"dropout": rng},
    )
    targets = shifted_targets(batch["labels"], batch["segment_ids"])
    head = lambda h: model.apply({"params": params}, h, method=LlavaModel.logits_from_hidden)
    return chunked_cross_entropy(hidden[:, :-1], targets, head, chunk)


def _split_micro(batch: dict, n: int) -> dict:
    """[B, ...] -> [n, B/n, ...] taking rows strided, so each micro-batch spans every data shard."""

    def split(x):
        b = x.shape[0]
        if b % n:
            raise ValueError(f"batch of {b} rows does not split into {n} micro-batches")
        return x.reshape((b // n, n) + x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def train_step(
    state: TrainState,
    batch: dict,
    *,
    config: LlavaConfig,
    optimizer: optax.GradientTransformation,
    lr_fn: Callable,
    micro_batches: int = 1,
    freeze_vision: bool = True,
    loss_chunk: int = 512,
):
    """One optimizer step over a global batch (see module docstring). Returns (state, metrics)."""
    batch = {k: batch[k] for k in BATCH_KEYS if k in batch}
    total = jnp.sum(shifted_targets(batch["labels"], batch["segment_ids"]) != IGNORE_INDEX)
    denom = jnp.maximum(total, 1).astype(jnp.float32)
    rng, step_rng = jax.random.split(state.rng)
    loss_fn = functools.partial(batch_loss, config=config, freeze_vision=freeze_vision, chunk=loss_chunk)

    def scaled(trainable, micro, key):
        nll, _ = loss_fn(trainable, state.frozen, micro, key)
        return nll / denom, nll

    grad_fn = jax.grad(scaled, has_aux=True)
    if micro_batches == 1:
        grads, nll = grad_fn(state.params, batch, step_rng)
    else:
        micro = _split_micro(batch, micro_batches)
        keys = jax.random.split(step_rng, micro_batches)

        def accumulate(carry, xs):
            g_sum, nll_sum = carry
            mb, key = xs
            mb = {k: activation_constraint(v, (BATCH,) + (None,) * (v.ndim - 1)) for k, v in mb.items()}
            g, nll = grad_fn(state.params, mb, key)
            return (jax.tree.map(jnp.add, g_sum, g), nll_sum + nll), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        (grads, nll), _ = jax.lax.scan(accumulate, (zeros, jnp.zeros((), jnp.float32)), (micro, keys))
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
    metrics = {
        "train/loss": nll / denom,
        "train/grad_norm": grad_norm,
        "train/lr": lr_fn(state.step),
        "train/tokens": total,
    }
    return new_state, metrics


def jit_train_step(
    *,
    config: LlavaConfig,
    optimizer: optax.GradientTransformation,
    lr_fn: Callable,
    micro_batches: int,
    freeze_vision: bool,
    loss_chunk: int,
    state_shardings,
    batch_sharding,
):
    """`train_step` jitted with explicit state/batch shardings and the state donated (updated in place)."""
    step = functools.partial(
        train_step,
        config=config,
        optimizer=optimizer,
        lr_fn=lr_fn,
        micro_batches=micro_batches,
        freeze_vision=freeze_vision,
        loss_chunk=loss_chunk,
    )
    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
