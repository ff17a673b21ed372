"""Inference: KV-cache generation (`generate`), chat over images (`chat`) and the `chat` CLI."""

from llava_jax.infer.generate import generate
from llava_jax.infer.sampling import SamplingMode, sample_tokens

__all__ = ["SamplingMode", "generate", "sample_tokens"]
