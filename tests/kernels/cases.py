"""Attention test cases shared by the kernel tests: inputs, and a check against the reference.

Every kernel is compared with `reference_attention` on float32 copies of the same inputs,
forward and gradients (dq, dk, dv) of sum(out * cotangent).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from llava_jax.kernels import attention, reference_attention

TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}


@dataclasses.dataclass(frozen=True)
class Case:
    """One attention call: shapes, dtype and masking."""

    name: str
    dtype: str
    causal: bool
    t: int
    s: int | None = None  # default t
    n: int = 2
    k: int = 1
    h: int = 64
    batch: int = 1
    segments: int = 0  # packed segments per row (contiguous runs), 0 for none
    scattered: bool = False  # segment ids random per position instead of contiguous runs
    padding: bool = False  # row 0 left-padded, row 1 right-padded (empty rows under causal)
    kv_segments: bool = False  # separate key ids (T != S), some query ids absent
    interpret: bool | None = None  # None: the default, which is interpret mode on CPU
    scale: float | None = None

    def __str__(self):
        return self.name


def make_inputs(case: Case, seed: int = 0):
    """(q, k, v, masking kwargs, cotangent float32[B, T, N, H])."""
    t, s = case.t, case.s or case.t
    rng = np.random.default_rng(seed)
    dtype = jnp.dtype(case.dtype)

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))

    q = normal(case.batch, t, case.n, case.h).astype(dtype)
    k = normal(case.batch, s, case.k, case.h).astype(dtype)
    v = normal(case.batch, s, case.k, case.h).astype(dtype)
    kw = {}
    if case.segments:
        if case.scattered:
            seg = rng.integers(0, case.segments, size=(case.batch, t))
        else:
            cuts = np.sort(rng.choice(np.arange(1, t), (case.batch, case.segments - 1)), axis=1)
            seg = (np.arange(t)[None, None] >= cuts[:, :, None]).sum(1)
        kw["segment_ids"] = jnp.asarray(seg, jnp.int32)
    if case.kv_segments:
        kw["segment_ids"] = jnp.asarray(rng.integers(0, 4, (case.batch, t)), jnp.int32)
        kw["kv_segment_ids"] = jnp.asarray(rng.integers(1, 4, (case.batch, s)), jnp.int32)
    if case.padding:
        pos = np.arange(s)[None]
        real = np.ones((case.batch, s), bool)
        real[0] = pos[0] >= s // 5  # left padding: under causal the first rows see nothing
        if case.batch > 1:
            real[1] = pos[0] < s - s // 7
        kw["padding_mask"] = jnp.asarray(real)
    do = normal(case.batch, t, case.n, case.h)
    return q, k, v, kw, do


def check_against_reference(impl: str, case: Case, seed: int = 0):
    """Assert forward and dq, dk, dv of `impl` (interpret mode on CPU) match the reference."""
    q, k, v, kw, do = make_inputs(case, seed)
    tol = TOLERANCE[case.dtype]

    def loss(fn, *qkv):
        out = fn(*qkv)
        return jnp.sum(out.astype(jnp.float32) * do), out

    def kernel(q, k, v):
        return attention(q, k, v, causal=case.causal, impl=impl, interpret=case.interpret, scale=case.scale, **kw)

    def reference(q, k, v):
        return reference_attention(q, k, v, causal=case.causal, scale=case.scale, **kw)

    grads, out = jax.jit(jax.grad(lambda *a: loss(kernel, *a), argnums=(0, 1, 2), has_aux=True))(q, k, v)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref_grads, ref_out = jax.jit(jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2), has_aux=True))(*f32)
    assert out.dtype == q.dtype and out.shape == q.shape
    for name, got, want in [("out", out, ref_out), *zip(("dq", "dk", "dv"), grads, ref_grads)]:
        assert got.dtype == q.dtype, name
        np.testing.assert_allclose(
            np.asarray(got, np.float32), np.asarray(want), atol=tol, rtol=tol, err_msg=f"{impl} {case} {name}"
        )
    if "padding_mask" in kw and case.causal:
        # The left-padded row has empty softmax rows: the reference gives exactly 0.
        assert float(jnp.abs(ref_out[0, 0]).max()) == 0.0
        assert float(jnp.abs(out[0, 0].astype(jnp.float32)).max()) == 0.0


# The matrix each interpret-mode kernel runs: causal and not, GQA and MQA, packed and
# scattered segments, left/right padding, T != S, a tiny T, head_dim 64 and 128, float32
# and bfloat16. No length is a multiple of a tile, so every kernel has a partial edge tile:
# 300 pads to 384 (splash: 3 x 3 tiles of 128; pallas_gpu: 3 x 6 of 128 x 64), 460 to 512
# (splash: one 512 tile; pallas_gpu 4 x 8), 190 to 256. Interpret mode costs per tile
# (about 2 s of CPU per case at these sizes; 577 and 1000 took up to twice that).
CASES = [
    Case("f32-causal-gqa-packed-300", "float32", True, 300, n=4, k=2, segments=3),
    Case("bf16-full-300", "bfloat16", False, 300, n=2, k=2),
    Case(
        "f32-causal-scattered-pad-190-h128",
        "float32",
        True,
        190,
        h=128,
        batch=2,
        segments=3,
        scattered=True,
        padding=True,
    ),
    Case("f32-causal-cross-kvseg-scale", "float32", True, 130, s=300, kv_segments=True, scale=0.3),
    Case("bf16-causal-tiny", "bfloat16", True, 5, n=2, k=1, interpret=True),
    Case("f32-full-pad-460-h128", "float32", False, 460, n=2, k=2, h=128, batch=2, padding=True),
    Case(
        "bf16-causal-mqa-packed-pad-460-h128", "bfloat16", True, 460, n=2, k=1, h=128, batch=2, segments=4, padding=True
    ),
]
