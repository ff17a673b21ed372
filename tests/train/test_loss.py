"""Chunked cross-entropy equals the plain [B, T, V] computation, in value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llava_jax.train.loss import IGNORE_INDEX, chunked_cross_entropy, shifted_targets


def _full(hidden, targets, w):
    logits = jnp.einsum("btd,dv->btv", hidden, w)
    logp = jax.nn.log_softmax(logits, -1)
    valid = targets != IGNORE_INDEX
    picked = jnp.take_along_axis(logp, jnp.where(valid, targets, 0)[..., None], -1)[..., 0]
    return -jnp.sum(jnp.where(valid, picked, 0.0)), valid.sum()


@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
def test_matches_full_logits(chunk):
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((2, 16, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((8, 50)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, (2, 16)))
    targets = targets.at[0, :5].set(IGNORE_INDEX)
    head = lambda h, w: jnp.einsum("btd,dv->btv", h, w)

    loss, count = chunked_cross_entropy(hidden, targets, lambda x: head(x, w), chunk)
    ref, ref_count = _full(hidden, targets, w)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    assert int(count) == int(ref_count) == 27
    g = jax.grad(lambda h, w: chunked_cross_entropy(h, targets, lambda x: head(x, w), chunk)[0], (0, 1))(hidden, w)
    g_ref = jax.grad(lambda h, w: _full(h, targets, w)[0], (0, 1))(hidden, w)
    for x, y in zip(g, g_ref):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_targets_never_cross_packed_samples():
    labels = jnp.array([[1, 2, 3, 4, 5, 6]])
    segments = jnp.array([[1, 1, 1, 2, 2, 0]])
    t = shifted_targets(labels, segments)
    # Position 2 (last of sample 1) must not predict token 4 (first of sample 2); pads predict nothing.
    assert t.tolist() == [[2, 3, IGNORE_INDEX, 5, IGNORE_INDEX]]


@pytest.mark.parametrize("chunk", [0, -4])
def test_non_positive_chunk_is_a_clear_error(chunk):
    hidden = jnp.zeros((1, 4, 2))
    targets = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="loss_chunk"):
        chunked_cross_entropy(hidden, targets, lambda h: h, chunk)
