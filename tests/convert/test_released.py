"""The published LLaVA-1.5 artifacts (tiny replicas, `tests.released_fixtures`) load as published.

Each released layout loads, through `llava_jax.load` / `load_components` and
through `llava-jax convert`, to logits equal to transformers'
`LlavaForConditionalGeneration` on the same (fp16-rounded) weights.
"""

import dataclasses
import json
import os

import numpy as np
import pytest

import llava_jax
from llava_jax.cli import main as cli_main
from llava_jax.config import ConfigError
from llava_jax.convert.hf_config import config_kind, llava_config_from_hf, original_llava_config
from llava_jax.convert.tensors import CheckpointError
from llava_jax.data.sentencepiece_tokens import for_tokenizer, tokenizer_settings
from tests import released_fixtures as rf
from tests import released_hf_fixtures as rhf
from tests.hf_fixtures import random_inputs

ATOL = 1e-4


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Every released directory, cut from two reference models, with reference logits."""
    import torch

    root = tmp_path_factory.mktemp("released")
    model = rf.reference_model(seed=21)
    hf_model = rf.reference_model(seed=22, hf_release=True)
    dirs = {
        "13b": rf.write_original_release(str(root / "llava-v1.5-13b"), model, variant="13b"),
        "7b-later": rf.write_original_release(
            str(root / "llava-v1.5-7b"), model, variant="7b-later", with_vision=False
        ),
        "clip": rf.write_clip_release(str(root / "clip-vit-large-patch14-336"), model),
        "vicuna": rf.write_vicuna_release(str(root / "vicuna-7b-v1.5"), model),
        "stage1": rf.write_projector_release(str(root / "llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5"), model),
        "hf": rhf.write_llava_hf_release(str(root / "llava-1.5-7b-hf"), hf_model),
    }
    out = {"dirs": dirs, "root": root}
    for name, m in (("original", model), ("hf", hf_model)):
        ids, pixels, mask = random_inputs(m.config, batch=2, length=14, seed=5)
        with torch.no_grad():
            ref = m(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels)).logits.numpy()
        out[name] = (ids, pixels, mask, ref)
    return out


def _original_ids(ids):
    """The reference uses id 767 for images; original checkpoints splice at the first id past the vocab."""
    return np.where(ids == rf.VOCAB - 1, rf.VOCAB, ids)


def _check_original_logits(model, released):
    ids, pixels, mask, ref = released["original"]
    assert model.config.image_token_index == rf.VOCAB
    np.testing.assert_allclose(model.logits(_original_ids(ids), pixels, mask), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["13b", "7b-later"])
def test_original_release_loads_with_clip_dir_to_transformers_logits(released, variant):
    path = released["dirs"][variant]
    with open(os.path.join(path, "config.json")) as f:
        published = json.load(f)
    assert published["model_type"] == "llava" and published["architectures"] == ["LlavaLlamaForCausalLM"]
    assert published["mm_vision_tower"] == rf.CLIP_HUB_NAME and published["torch_dtype"] == "float16"
    model = llava_jax.load(path, vision_tower=released["dirs"]["clip"])
    assert model.config.image_aspect_ratio == "pad"
    assert model.params["llm"]["embed_tokens"].dtype == np.float32
    _check_original_logits(model, released)
    # The released tokenizer (slow LlamaTokenizer, legacy false) is tokenized as LLaVA did.
    slow = for_tokenizer(model.tokenizer)
    assert slow is not None and slow.legacy is False and model.tokenizer.pad_token == "<unk>"


def test_hub_name_tower_without_vision_tower_names_the_clip_dir(released):
    # With the tower's weights in the checkpoint: the default ViT-L/14-336 config does not fit them.
    with pytest.raises(CheckpointError, match=r"mm_hidden_size 32 != vision hidden size 1024.*pass vision_tower="):
        llava_jax.load(released["dirs"]["13b"])
    # Without them: the error says which CLIP directory to fetch and pass.
    with pytest.raises(
        CheckpointError, match=r"no vision tower weights; pass vision_tower=.*clip-vit-large-patch14-336"
    ):
        llava_jax.load(released["dirs"]["7b-later"])


def test_convert_cli_of_original_release(released, tmp_path):
    src = released["dirs"]["13b"]
    cli_main(["convert", src, str(tmp_path / "jax"), "--vision-tower", released["dirs"]["clip"]])
    model = llava_jax.load(str(tmp_path / "jax"))
    _check_original_logits(model, released)
    # The converted directory keeps the sentencepiece model and the slow tokenizer's settings.
    assert os.path.exists(tmp_path / "jax" / "tokenizer.model")
    assert tokenizer_settings(str(tmp_path / "jax"))["legacy"] is False
    text = "<image>\nWhat is this? ASSISTANT: A cat.</s>USER: And?"
    source = llava_jax.load(src, vision_tower=released["dirs"]["clip"]).tokenizer
    assert for_tokenizer(model.tokenizer)(text) == for_tokenizer(source)(text)
    # So does an HF export of it.
    from transformers import AutoTokenizer

    model.export_hf(str(tmp_path / "hf"))
    exported = for_tokenizer(AutoTokenizer.from_pretrained(tmp_path / "hf"))
    assert exported is not None and exported.legacy is False and exported(text) == for_tokenizer(source)(text)


def test_stage1_projector_with_vicuna_and_clip(released, tmp_path):
    d = released["dirs"]
    projector = os.path.join(d["stage1"], "mm_projector.bin")
    model = llava_jax.load_components(d["clip"], d["vicuna"], projector=projector)
    # The stage-1 model was trained on square images (its config.json says so).
    assert model.config.image_aspect_ratio == "square"
    _check_original_logits(model, released)
    assert for_tokenizer(model.tokenizer) is not None
    # The same through `load` and the CLI.
    again = llava_jax.load(d["stage1"], llm=d["vicuna"], vision_tower=d["clip"])
    _check_original_logits(again, released)
    cli_main(["convert", projector, str(tmp_path / "jax"), "--llm", d["vicuna"], "--vision-tower", d["clip"]])
    _check_original_logits(llava_jax.load(str(tmp_path / "jax")), released)
    with pytest.raises(CheckpointError, match=r"stage-1 projector \(mm_projector.bin\) alone: pass llm="):
        llava_jax.load(d["stage1"])
    with pytest.raises(CheckpointError, match=r"not a stage-1 projector"):
        llava_jax.load_components(d["clip"], d["vicuna"], projector=d["vicuna"])
    with pytest.raises(CheckpointError, match=r"llm= only joins a stage-1 projector"):
        llava_jax.load(d["13b"], llm=d["vicuna"], vision_tower=d["clip"])


def test_llava_hf_release_loads_as_published(released):
    path = released["dirs"]["hf"]
    ids, pixels, mask, ref = released["hf"]
    model = llava_jax.load(path)
    assert model.config.image_token_index == rf.HF_IMAGE_TOKEN and model.config.llm.vocab_size == rf.HF_VOCAB
    np.testing.assert_allclose(model.logits(ids, pixels, mask), ref, atol=ATOL, rtol=0)
    tok = model.tokenizer
    assert tok.convert_tokens_to_ids(["<image>", "<pad>"]) == [rf.HF_IMAGE_TOKEN, rf.HF_PAD_TOKEN]
    assert tok.pad_token_id == rf.HF_PAD_TOKEN and for_tokenizer(tok) is not None
    with open(os.path.join(path, "processor_config.json")) as f:
        assert json.load(f)["image_token"] == "<image>"


def test_llava_hf_release_converts(released, tmp_path):
    ids, pixels, mask, ref = released["hf"]
    cli_main(["convert", released["dirs"]["hf"], str(tmp_path / "jax")])
    model = llava_jax.load(str(tmp_path / "jax"))
    np.testing.assert_allclose(model.logits(ids, pixels, mask), ref, atol=ATOL, rtol=0)
    assert model.tokenizer.convert_tokens_to_ids("<image>") == rf.HF_IMAGE_TOKEN
    assert for_tokenizer(model.tokenizer) is not None


def test_llava_hf_chat_template_is_the_llava_hf_template(released):
    from transformers import AutoProcessor

    from llava_jax.data.conversation import generation_prompt

    processor = AutoProcessor.from_pretrained(released["dirs"]["hf"])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == generation_prompt("llava_hf", "What is this?")


# --------------------------------------------------------------------- classification
ORIGINAL_13B = {  # the published llava-v1.5-13b config.json, verbatim (REFERENCE.md)
    "_name_or_path": "llava-v1.5-13b",
    "architectures": ["LlavaLlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "freeze_mm_mlp_adapter": False,
    "freeze_mm_vision_resampler": False,
    "hidden_act": "silu",
    "hidden_size": 5120,
    "image_aspect_ratio": "pad",
    "initializer_range": 0.02,
    "intermediate_size": 13824,
    "max_length": 4096,
    "max_position_embeddings": 4096,
    "mm_hidden_size": 1024,
    "mm_projector_type": "mlp2x_gelu",
    "mm_resampler_type": None,
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2,
    "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    "model_type": "llava",
    "num_attention_heads": 40,
    "num_hidden_layers": 40,
    "num_key_value_heads": 40,
    "pad_token_id": 0,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.31.0",
    "tune_mm_mlp_adapter": False,
    "tune_mm_vision_resampler": False,
    "unfreeze_mm_vision_tower": False,
    "use_cache": True,
    "use_mm_proj": True,
    "vocab_size": 32000,
}
LLAVA_HF_7B = {  # llava-hf/llava-1.5-7b-hf's config.json as published (sizes left to LlamaConfig's defaults)
    "architectures": ["LlavaForConditionalGeneration"],
    "ignore_index": -100,
    "image_token_index": 32000,
    "model_type": "llava",
    "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.36.0.dev0",
    "vision_config": {
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
        "vocab_size": 32000,
    },
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "vocab_size": 32064,
}


def _same_model(parsed, preset):
    """Equal up to the token ids the presets do not pin (pad)."""
    llm = dataclasses.replace(parsed.llm, pad_token_id=preset.llm.pad_token_id)
    assert dataclasses.replace(parsed, llm=llm) == preset


def test_published_full_size_configs_are_the_presets():
    assert config_kind(ORIGINAL_13B) == "original"
    _same_model(llava_config_from_hf(ORIGINAL_13B), llava_jax.llava_v15_13b())
    seven = {**ORIGINAL_13B, "hidden_size": 4096, "intermediate_size": 11008}
    seven.update(num_attention_heads=32, num_hidden_layers=32, num_key_value_heads=32)
    _same_model(llava_config_from_hf(seven), llava_jax.llava_v15_7b())
    assert config_kind(LLAVA_HF_7B) == "hf"
    _same_model(llava_config_from_hf(LLAVA_HF_7B), llava_jax.llava_v15_7b(vocab_size=32064))


def test_classification_by_architectures_fields_and_text_config():
    hybrid = {**ORIGINAL_13B, "text_config": {"model_type": "llama"}}  # saved by newer transformers
    assert config_kind(hybrid) == "original"
    no_arch = {k: v for k, v in ORIGINAL_13B.items() if k != "architectures"}
    assert config_kind(no_arch) == "original"
    assert config_kind({k: v for k, v in LLAVA_HF_7B.items() if k != "architectures"}) == "hf"
    cases = {
        "llama": ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, r"load_components"),
        "mistral": ({**ORIGINAL_13B, "architectures": ["LlavaMistralForCausalLM"]}, r"LlavaMistralForCausalLM"),
        "both": ({**ORIGINAL_13B, "architectures": ["LlavaLlamaForCausalLM", "LlavaForConditionalGeneration"]}, "both"),
        "no_mm": ({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava"}, r"no mm_\* fields"),
        "no_text": ({"architectures": ["LlavaForConditionalGeneration"]}, r"no text_config"),
        "ambiguous": ({"model_type": "llava", "mm_hidden_size": 1024, "text_config": {}}, r"neither"),
        "empty": ({"model_type": "llava"}, r"found architectures=\[\], model_type='llava', mm_\* fields=none"),
    }
    for name, (config, message) in cases.items():
        with pytest.raises(ConfigError, match=message) as error:
            config_kind(config)
        assert "found architectures=" in str(error.value), name


def test_original_settings_llava_never_uses_are_errors():
    # (anyres itself is LLaVA-v1.6's form, read in tests/convert/test_llava_next.py.)
    bad = {
        "image_aspect_ratio": ("anyres_max_9", r"image_aspect_ratio 'anyres_max_9'"),
        "mm_use_im_start_end": (True, r"mm_use_im_start_end"),
        "mm_patch_merge_type": ("spatial_unpad", r"mm_patch_merge_type 'spatial_unpad' .* needs 'anyres'"),
        "mm_vision_tower": ("openai/clip-vit-large-patch14", r"pass vision_tower= a local copy"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(ConfigError, match=message):
            original_llava_config({**ORIGINAL_13B, key: value})
    # Absent aspect: the reference's `process_images` then uses the CLIP processor alone.
    no_aspect = {k: v for k, v in ORIGINAL_13B.items() if k != "image_aspect_ratio"}
    assert original_llava_config(no_aspect).image_aspect_ratio == "square"


def test_unknown_layout_directory_lists_what_was_found(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"architectures": ["LlavaMptForCausalLM"], "model_type": "llava_mpt", "mm_hidden_size": 1024}, f)
    with pytest.raises(CheckpointError, match=r"architectures=\['LlavaMptForCausalLM'\].*mm_\* fields=\['mm_hidden"):
        llava_jax.load(str(tmp_path))
