"""Checkpoint conversion: HF / original LLaVA <-> llava_jax parameter trees."""

from llava_jax.convert.tensors import CheckpointError

__all__ = ["CheckpointError"]
