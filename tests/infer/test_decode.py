"""The unrolled decode layout: an explicit, documented copy of the decoder weights, kept and invalidated."""

import dataclasses

import jax
import numpy as np

from llava_jax.infer.decode import UnrolledLayers


def _prompt(model):
    ids = np.asarray([[1, 5, 9, 11, 4]], np.int32)
    return ids, np.ones_like(ids)


def test_unrolled_generation_keeps_one_copy_and_reuses_it(chat_model):
    model = dataclasses.replace(chat_model, decode_layers=None)
    ids, mask = _prompt(model)
    scan = model.generate(ids, None, mask, max_new_tokens=4, eos_token_id=(), layout="scan")
    assert model.decode_layers is None  # the scanned layout needs no copy
    unrolled = model.generate(ids, None, mask, max_new_tokens=4, eos_token_id=(), layout="unrolled")
    np.testing.assert_array_equal(unrolled, scan)
    kept = model.decode_layers
    assert isinstance(kept, UnrolledLayers) and len(kept.layers) == model.config.llm.num_layers
    stacked = jax.tree.leaves(model.params["llm"]["layers"])
    assert kept.nbytes == sum(x.size * x.dtype.itemsize for x in stacked)
    first = jax.tree.leaves(kept.layers[0])
    np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(stacked[0][0]))
    model.generate(ids, None, mask, max_new_tokens=4, eos_token_id=(), layout="unrolled")
    assert model.decode_layers is kept  # reused, not split again


def test_new_parameters_make_the_copy_stale(chat_model):
    model = dataclasses.replace(chat_model, decode_layers=None)
    ids, mask = _prompt(model)
    before = model.generate(ids, None, mask, max_new_tokens=4, eos_token_id=(), layout="unrolled")
    old = model.decode_layers
    # New arrays for the decoder (scaled weights): the kept copy no longer matches and must not be used.
    model.params = {
        **model.params,
        "llm": {**model.params["llm"], "layers": jax.tree.map(lambda x: x * 3.0, model.params["llm"]["layers"])},
    }
    assert not old.matches(model.params)
    after = model.generate(ids, None, mask, max_new_tokens=4, eos_token_id=(), layout="unrolled")
    assert model.decode_layers is not old and model.decode_layers.matches(model.params)
    reference = model.generate(ids, None, mask, max_new_tokens=4, eos_token_id=(), layout="scan")
    np.testing.assert_array_equal(after, reference)
    assert not np.array_equal(after, before)  # the scaled weights do change the answer
