"""LLaMA decoder logits vs transformers' LlamaForCausalLM, and cache consistency."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from llava_jax.convert.hf import canonical_sources, read_params
from llava_jax.convert.hf_config import llava_config_from_hf
from llava_jax.convert.tensors import weight_files
from llava_jax.model.llama import LlamaModel, init_cache
from tests.hf_fixtures import TEXT, hf_llava_config, perturb_norms, save

ROPES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
}


def _load_llama(tmp_path, torch, text):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    hf = perturb_norms(LlamaForCausalLM(LlamaConfig(**text)).eval())
    save(hf, str(tmp_path))
    config = llava_config_from_hf(hf_llava_config(text=text).to_dict())
    params = read_params(
        config, canonical_sources(weight_files(str(tmp_path)), where="t"), dtype="float32", parts=("llm",)
    )["llm"]
    return hf, config.llm, params


@pytest.mark.parametrize("rope", list(ROPES))
@pytest.mark.parametrize("kv_heads", [2, 4])
def test_logits_match_hf(rope, kv_heads, tmp_path, torch_cpu):
    text = {**TEXT, "num_key_value_heads": kv_heads, "max_position_embeddings": 16}
    if ROPES[rope]:
        text["rope_parameters"] = {**ROPES[rope], "rope_theta": 10000.0}
    hf, config, params = _load_llama(tmp_path, torch_cpu, text)
    # 24 tokens > max_position_embeddings exercises the dynamic-NTK branch.
    ids = np.random.default_rng(0).integers(0, TEXT["vocab_size"], size=(2, 24))
    with torch_cpu.no_grad():
        ref = hf(input_ids=torch_cpu.tensor(ids)).logits.numpy()
    model = LlamaModel(config)
    embeds = model.apply({"params": params}, jnp.asarray(ids), method=LlamaModel.embed)
    positions = jnp.broadcast_to(jnp.arange(24), (2, 24))
    out, _ = model.apply({"params": params}, embeds, positions)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)


def test_cached_decode_equals_full_sequence(tmp_path, torch_cpu):
    hf, config, params = _load_llama(tmp_path, torch_cpu, dict(TEXT))
    config = dataclasses.replace(config)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, TEXT["vocab_size"], size=(2, 10)))
    positions = jnp.broadcast_to(jnp.arange(10), (2, 10))
    model, decoder = LlamaModel(config), LlamaModel(config, decode=True)
    embeds = model.apply({"params": params}, ids, method=LlamaModel.embed)
    full, _ = model.apply({"params": params}, embeds, positions)
    cache = init_cache(config, 2, 16)
    prefill, cache = model.apply(
        {"params": params}, embeds[:, :6], positions[:, :6], padding_mask=jnp.ones((2, 6), bool), cache=cache
    )
    np.testing.assert_allclose(np.asarray(prefill), np.asarray(full[:, :6]), atol=1e-5)
    for t in range(6, 10):
        valid = jnp.broadcast_to(jnp.arange(16) <= t, (2, 16))
        step, cache = decoder.apply(
            {"params": params},
            embeds[:, t : t + 1],
            positions[:, t : t + 1],
            padding_mask=valid,
            cache=cache,
            cache_index=jnp.int32(t),
        )
        np.testing.assert_allclose(np.asarray(step[:, 0]), np.asarray(full[:, t]), atol=1e-4)
