"""Shared building blocks: norms, logically-partitioned dense layers, RoPE, activations.

Letters: B batch, T length, D model width, N heads, K key/value heads,
H head dim, F MLP width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from llava_jax.config import RopeScaling
from llava_jax.sharding import NORM


def dtype_of(name: str):
    """jnp dtype from its name ('float32', 'bfloat16', 'float16')."""
    return jnp.dtype(name)


def quick_gelu(x):
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch's default GELU is exact
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def _param_init(init, names: Sequence[str | None]):
    return nn.with_logical_partitioning(init, tuple(names))


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 (two-pass variance, as torch), params `scale`, `bias`."""

    eps: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        """x: float[..., D] -> float[..., D] in `dtype`."""
        d = x.shape[-1]
        scale = self.param("scale", _param_init(nn.initializers.ones, (NORM,)), (d,), dtype_of(self.param_dtype))
        bias = self.param("bias", _param_init(nn.initializers.zeros, (NORM,)), (d,), dtype_of(self.param_dtype))
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(dtype_of(self.dtype))


class RMSNorm(nn.Module):
    """LLaMA RMSNorm: normalise in float32, cast back, then multiply by `scale` (HF order)."""

    eps: float = 1e-6
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        """x: float[..., D] -> float[..., D] in `dtype`."""
        d = x.shape[-1]
        scale = self.param("scale", _param_init(nn.initializers.ones, (NORM,)), (d,), dtype_of(self.param_dtype))
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + self.eps)
        compute = dtype_of(self.dtype)
        return scale.astype(compute) * y.astype(compute)


class Dense(nn.Module):
    """Dense layer over the last `len(in_axes)` dims with logical axis names on every parameter.

    Kernel shape `in_shape + out_shape`, bias `out_shape`. Computes in `dtype`
    with float32 accumulation.
    """

    out_shape: tuple[int, ...]
    in_axes: tuple[str | None, ...]
    out_axes: tuple[str | None, ...]
    use_bias: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    kernel_init: Callable = nn.initializers.normal(0.02)
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, x):
        """x: float[..., *in_shape] -> float[..., *out_shape]."""
        n_in = len(self.in_axes)
        in_shape = x.shape[-n_in:]
        kernel = self.param(
            "kernel",
            _param_init(self.kernel_init, self.in_axes + self.out_axes),
            tuple(in_shape) + tuple(self.out_shape),
            dtype_of(self.param_dtype),
        )
        compute = dtype_of(self.dtype)
        dims = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        xc = x.astype(compute)
        y = jax.lax.dot_general(xc, kernel.astype(compute), (dims, ((), ())), preferred_element_type=jnp.float32)
        if self.lora_rank:
            # LoRA (PEFT conventions): A Kaiming-uniform, B zero, so training starts at the base model.
            a = self.param(
                "lora_a",
                _param_init(
                    nn.initializers.he_uniform(in_axis=tuple(range(n_in)), out_axis=-1), self.in_axes + (None,)
                ),
                tuple(in_shape) + (self.lora_rank,),
                dtype_of(self.param_dtype),
            )
            b = self.param(
                "lora_b",
                _param_init(nn.initializers.zeros, (None,) + self.out_axes),
                (self.lora_rank,) + tuple(self.out_shape),
                dtype_of(self.param_dtype),
            )
            # Dropout on the adapter input only, active when the caller passes a 'dropout' rng (training).
            xa = nn.Dropout(self.lora_dropout, deterministic=not self.has_rng("dropout"))(xc)
            h = jax.lax.dot_general(xa, a.astype(compute), (dims, ((), ())), preferred_element_type=jnp.float32)
            y = y + (self.lora_alpha / self.lora_rank) * jnp.tensordot(
                h.astype(compute), b.astype(compute), axes=1, preferred_element_type=jnp.float32
            )
        if self.use_bias:
            bias = self.param(
                "bias",
                _param_init(nn.initializers.zeros, self.out_axes),
                tuple(self.out_shape),
                dtype_of(self.param_dtype),
            )
            y = y + bias.astype(jnp.float32)
        return y.astype(compute)


# ----------------------------------------------------------------------------- RoPE
def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling, max_position_embeddings: int, max_position=None):
    """float32[H/2] inverse frequencies as HF computes them for `scaling.rope_type`.

    `max_position` (traced int scalar, the largest position in the call) drives
    the `dynamic` NTK variant, which HF recomputes when the sequence outgrows
    `max_position_embeddings`.
    """
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inv = 1.0 / (theta**exponent)
    kind = scaling.rope_type
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / scaling.factor
    if kind == "dynamic":
        if max_position is None:
            return inv
        seq_len = jnp.maximum(max_position.astype(jnp.float32) + 1.0, float(max_position_embeddings))
        base = theta * ((scaling.factor * seq_len / max_position_embeddings) - (scaling.factor - 1)) ** (
            head_dim / (head_dim - 2)
        )
        return jnp.where(max_position + 1 > max_position_embeddings, 1.0 / (base**exponent), inv)
    if kind == "llama3":
        old = scaling.original_max_position_embeddings
        low_wavelen = old / scaling.low_freq_factor
        high_wavelen = old / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = jnp.where(wavelen > low_wavelen, inv / scaling.factor, inv)
        smooth = (old / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return jnp.where(medium, smoothed, scaled)
    raise ValueError(f"rope_type {kind!r} not supported")


def rope_cos_sin(positions, inv_freq, dtype):
    """cos, sin: float[B, T, H] for int[B, T] positions (HF: angles duplicated over both halves)."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rope(x, cos, sin):
    """Half-split rotary embedding. x: float[B, T, N, H]; cos, sin: float[B, T, H]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]
