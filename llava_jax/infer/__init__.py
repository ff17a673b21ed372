"""Inference: KV-cache generation (`generate`), answers about images (`chat`) and the `chat` CLI."""

from llava_jax.infer.chat import chat
from llava_jax.infer.generate import generate
from llava_jax.infer.sampling import SamplingMode, sample_tokens

__all__ = ["SamplingMode", "chat", "generate", "sample_tokens"]
