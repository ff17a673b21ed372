"""Optimizer and schedule of the LLaVA-1.5 recipe: AdamW, linear warmup then cosine decay, global clipping."""

from __future__ import annotations

import dataclasses

import optax

from llava_jax.train.partition import label_tree


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW + warmup-cosine settings; `part_lrs` gives other peak rates to path regexes (first match)."""

    lr: float = 2e-5
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    clip_norm: float = 1.0
    part_lrs: tuple[tuple[str, float], ...] = ()


def schedule(peak: float, total_steps: int, warmup_ratio: float):
    """HF `get_cosine_schedule_with_warmup`: 0 -> peak linearly over ceil(ratio * total), cosine to 0 at total."""
    import math

    warmup = math.ceil(warmup_ratio * total_steps)
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps=max(warmup, 0), decay_steps=max(total_steps, warmup + 1), end_value=0.0
    )


def make_optimizer(config: OptimConfig, total_steps: int, trainable_params) -> tuple:
    """(optax transformation, lr schedule of the main part) for the trainable parameter tree.

    Clipping is global over all trainable gradients (as HF Trainer's `max_grad_norm`),
    then each part gets AdamW with its own peak rate and the shared schedule shape.
    """

    def adamw(peak):
        return optax.adamw(
            schedule(peak, total_steps, config.warmup_ratio),
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
        )

    clip = optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity()
    if not config.part_lrs:
        return optax.chain(clip, adamw(config.lr)), schedule(config.lr, total_steps, config.warmup_ratio)
    rules = [(regex, f"part{i}") for i, (regex, _) in enumerate(config.part_lrs)]
    transforms = {f"part{i}": adamw(lr) for i, (_, lr) in enumerate(config.part_lrs)}
    transforms["main"] = adamw(config.lr)
    labels = label_tree(trainable_params, rules, "main")
    tx = optax.chain(clip, optax.multi_transform(transforms, labels))
    return tx, schedule(config.lr, total_steps, config.warmup_ratio)
