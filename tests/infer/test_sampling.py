"""Sampling filters against transformers' logits warpers, and the draw's seeding."""

import jax
import numpy as np
import pytest

from llava_jax.infer.sampling import SamplingMode, filter_top_p, sample_tokens


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_keeps_what_hf_keeps(top_p, torch_cpu):
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = np.random.default_rng(0).standard_normal((4, 50)).astype(np.float32) * 3
    ref = TopPLogitsWarper(top_p)(None, torch_cpu.tensor(logits)).numpy()
    out = np.asarray(filter_top_p(logits, top_p))
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(ref))


def test_draws_follow_the_filtered_distribution():
    logits = np.log(np.asarray([[0.5, 0.3, 0.15, 0.05]], np.float32))
    mode = SamplingMode.of(temperature=1.0, top_k=0, top_p=0.7)  # keeps the first two tokens
    draws = np.asarray([sample_tokens(logits, jax.random.PRNGKey(i), 1.0, 0.7, mode)[0] for i in range(300)])
    assert set(draws) == {0, 1}
    assert 0.5 < (draws == 0).mean() < 0.75  # 0.5 / 0.8 = 0.625
    top2 = SamplingMode.of(temperature=1.0, top_k=2, top_p=1.0)
    assert {int(sample_tokens(logits, jax.random.PRNGKey(i), 1.0, 1.0, top2)[0]) for i in range(50)} == {0, 1}


def test_rows_draw_independently_of_batch_size():
    logits = np.random.default_rng(1).standard_normal((3, 20)).astype(np.float32)
    mode = SamplingMode.of(temperature=1.0, top_k=0, top_p=1.0)
    key = jax.random.PRNGKey(7)
    batch = np.asarray(sample_tokens(logits, key, 1.0, 1.0, mode))
    assert int(sample_tokens(logits[:1], key, 1.0, 1.0, mode)[0]) == batch[0]
    assert SamplingMode.of(temperature=0.0, top_k=5, top_p=0.5) == SamplingMode()  # greedy ignores filters
