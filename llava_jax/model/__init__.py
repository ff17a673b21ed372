"""Flax Linen modules: CLIP vision tower, projector, LLaMA decoder, and the LLaVA composite."""

from llava_jax.model.llama import LlamaModel, init_cache
from llava_jax.model.llava import LlavaModel
from llava_jax.model.params import abstract_params, init_params, param_logical_axes
from llava_jax.model.projector import Projector
from llava_jax.model.vision import VisionTower

__all__ = [
    "LlamaModel",
    "LlavaModel",
    "Projector",
    "VisionTower",
    "abstract_params",
    "init_cache",
    "init_params",
    "param_logical_axes",
]
