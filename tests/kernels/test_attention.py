"""Dispatch, the shared mask helpers, and the absence of dense masks on the kernel paths."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llava_jax.kernels import (
    UnsupportedAttention,
    attention,
    build_mask,
    masks,
    pallas_gpu,
    reference_attention,
    select_impl,
    splash,
    unsupported_reason,
)


def _qkv(b=1, t=64, s=None, n=4, k=2, h=64, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    s = s or t
    q = jnp.asarray(rng.standard_normal((b, t, n, h)), dtype)
    kv = jnp.asarray(rng.standard_normal((2, b, s, k, h)), dtype)
    return q, kv[0], kv[1]


def test_auto_on_cpu_is_the_reference():
    q, k, v = _qkv()
    seg = jnp.asarray(np.repeat([[0, 1]], 32, axis=1))
    out = attention(q, k, v, causal=True, segment_ids=seg)
    ref = reference_attention(q, k, v, causal=True, segment_ids=seg)
    np.testing.assert_array_equal(out, ref)
    assert select_impl(q, k, v, causal=True) == "xla"


@pytest.mark.parametrize(
    "backend,dtype,masked,want",
    [
        ("gpu", jnp.bfloat16, False, "cudnn"),
        ("gpu", jnp.bfloat16, True, "pallas_gpu"),  # segment ids: cuDNN would need a dense mask
        ("gpu", jnp.float32, False, "pallas_gpu"),  # cuDNN has no float32
        ("tpu", jnp.bfloat16, True, "splash"),
        ("cpu", jnp.bfloat16, True, "xla"),
    ],
)
def test_auto_choice_per_backend(backend, dtype, masked, want):
    q, k, v = _qkv(dtype=dtype)
    seg = jnp.zeros((1, 64), jnp.int32) if masked else None
    assert select_impl(q, k, v, causal=True, segment_ids=seg, backend=backend) == want


def test_unsupported_combinations_say_why():
    q, k, v = _qkv(dtype=jnp.bfloat16)
    seg = jnp.zeros((1, 64), jnp.int32)
    reason = unsupported_reason("cudnn", q, k, v, causal=True, segment_ids=seg, backend="gpu")
    assert "segment" in reason
    q32, k32, v32 = _qkv()
    assert "dtype" in unsupported_reason("cudnn", q32, k32, v32, causal=False, backend="gpu")
    qt, kt, vt = _qkv(t=32, s=64, dtype=jnp.bfloat16)
    assert "T == S" in unsupported_reason("cudnn", qt, kt, vt, causal=True, backend="gpu")
    qh, kh, vh = _qkv(h=512, dtype=jnp.bfloat16)
    assert "head_dim" in unsupported_reason("cudnn", qh, kh, vh, causal=True, backend="gpu")
    assert "head_dim" in unsupported_reason("pallas_gpu", qh, kh, vh, causal=True, backend="gpu")
    assert "backend" in unsupported_reason("pallas_gpu", q, k, v, causal=True, backend="tpu", interpret=False)
    assert "backend" in unsupported_reason("splash", q, k, v, causal=True, backend="gpu")
    ql, kl, vl = _qkv(t=64, s=32)
    assert "more queries" in unsupported_reason("splash", ql, kl, vl, causal=True, backend="tpu")
    qi, ki, vi = _qkv(dtype=jnp.int32)
    assert "dtype" in unsupported_reason("splash", qi, ki, vi, causal=True, backend="tpu")


def test_explicit_impl_raises_with_reason():
    q, k, v = _qkv()
    with pytest.raises(UnsupportedAttention, match="cudnn: .*GPU"):
        attention(q, k, v, causal=True, impl="cudnn")
    with pytest.raises(UnsupportedAttention, match="backend"):
        attention(q, k, v, causal=True, impl="pallas_gpu", interpret=False)
    with pytest.raises(UnsupportedAttention, match="not in"):
        attention(q, k, v, causal=True, impl="flash")
    with pytest.raises(UnsupportedAttention, match="multiple"):
        attention(q[:, :, :3], k, v, causal=True)
    with pytest.raises(UnsupportedAttention, match="kv_segment_ids"):
        qt, kt, vt = _qkv(t=32, s=64)
        attention(qt, kt, vt, causal=True, segment_ids=jnp.zeros((1, 32), jnp.int32))


def test_fold_segments_and_rows_with_keys_match_the_dense_mask():
    rng = np.random.default_rng(1)
    b, t, s = 3, 40, 56
    seg = jnp.asarray(rng.integers(0, 4, (b, t)), jnp.int32)
    kv_seg = jnp.asarray(rng.integers(1, 4, (b, s)), jnp.int32)
    pad = jnp.asarray(rng.random((b, s)) > 0.3)
    for causal in (True, False):
        for kw in [
            {"padding_mask": pad},
            {"segment_ids": seg, "kv_segment_ids": kv_seg},
            {"segment_ids": seg, "kv_segment_ids": kv_seg, "padding_mask": pad},
        ]:
            dense = np.asarray(build_mask(b, t, s, causal=causal, **kw))
            q_seg, k_seg = masks.fold_segments(
                kw.get("segment_ids"), kw.get("kv_segment_ids"), kw.get("padding_mask"), t=t, s=s
            )
            folded = np.asarray(q_seg)[:, :, None] == np.asarray(k_seg)[:, None, :]
            if causal:
                folded &= np.arange(s)[None, None] <= np.arange(t)[None, :, None] + s - t
            np.testing.assert_array_equal(folded, dense)
            rows = masks.rows_with_keys(q_seg, k_seg, t=t, s=s, causal=causal)
            np.testing.assert_array_equal(np.asarray(rows), dense.any(-1))
    # Causal with more queries than keys: the first T - S rows see nothing.
    rows = masks.rows_with_keys(None, None, t=10, s=6, causal=True)
    np.testing.assert_array_equal(np.asarray(rows)[0], np.arange(10) >= 4)
    assert masks.rows_with_keys(None, None, t=6, s=10, causal=True) is None


def _tensor_sizes(hlo_text: str):
    """Element counts of every ranked tensor type in StableHLO text."""
    dims = re.findall(r"tensor<((?:\d+x)+)", hlo_text)
    return [math.prod(int(d) for d in m.rstrip("x").split("x")) for m in dims]


@pytest.mark.parametrize(
    "impl,platform,kernel_call",
    [
        ("pallas_gpu", "cuda", "__gpu$xla.gpu.triton"),
        ("splash", "tpu", "tpu_custom_call"),
        ("xla", "cpu", None),
    ],
)
def test_no_dense_mask_on_kernel_paths(impl, platform, kernel_call):
    """The compiled (not interpreted) program for GPU / TPU, forward and backward, holds no
    tensor as large as one head's [T, S] mask; the XLA reference does (the check works)."""
    b, t, n, kh, h = 2, 1000, 2, 1, 128
    q = jax.ShapeDtypeStruct((b, t, n, h), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((b, t, kh, h), jnp.bfloat16)
    ids = jax.ShapeDtypeStruct((b, t), jnp.int32)
    pad = jax.ShapeDtypeStruct((b, t), jnp.bool_)
    fn = {
        "pallas_gpu": pallas_gpu.attention,
        "splash": splash.attention,
        "xla": lambda *a, interpret, **kw: reference_attention(*a, **kw),
    }[impl]

    def loss_and_grads(q, k, v, seg, pad):
        def loss(q, k, v):
            out = fn(q, k, v, causal=True, segment_ids=seg, padding_mask=pad, interpret=False)
            return out.astype(jnp.float32).sum()

        return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

    lowered = jax.jit(loss_and_grads).trace(q, kv, kv, ids, pad).lower(lowering_platforms=(platform,))
    text = lowered.as_text()
    biggest = max(_tensor_sizes(text))
    if kernel_call is None:
        assert biggest >= t * t
    else:
        assert text.count(kernel_call) >= 3  # forward, and the backward kernels
        assert biggest < t * t, f"{impl} builds a tensor of {biggest} elements"
