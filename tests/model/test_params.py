"""Parameter trees at full size (eval_shape, no compute) and their logical axes."""

import jax
import pytest

from llava_jax.model.params import abstract_params, count_params, param_logical_axes
from llava_jax.presets import llava_v15_7b, llava_v15_13b, tiny


@pytest.mark.parametrize("preset, released", [(llava_v15_7b, 7.06e9), (llava_v15_13b, 13.35e9)])
def test_parameter_count_matches_released_models(preset, released):
    n = count_params(abstract_params(preset()))
    assert abs(n - released) / released < 0.005, n


def test_hf_vocab_variant_counts():
    assert count_params(abstract_params(llava_v15_7b(vocab_size=32064))) > count_params(abstract_params(llava_v15_7b()))


def test_every_parameter_has_logical_axes():
    config = llava_v15_7b()
    axes = param_logical_axes(config)
    shapes = abstract_params(config)
    is_names = lambda x: isinstance(x, tuple)
    for names, leaf in zip(jax.tree.leaves(axes, is_leaf=is_names), jax.tree.leaves(shapes)):
        assert len(names) == len(leaf.shape)
    stacked = axes["llm"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert stacked == ("layers", "embed", "heads", "kv")
    assert axes["llm"]["embed_tokens"] == ("vocab", "embed")


def test_tree_has_one_namespace_per_tower():
    assert set(abstract_params(tiny())) == {"vision", "projector", "llm"}
