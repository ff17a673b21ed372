"""llava-hf/llava-1.5-7b-hf as published, at tiny size (see `tests.released_fixtures`).

Safetensors shards in the published on-disk key layout, `config.json` with
`image_token_index` / vocabulary padded past `<image>` and `<pad>`,
`processor_config.json`, `chat_template.json`, `preprocessor_config.json` and
the tokenizer (tokenizer.model + tokenizer.json) with `<image>` and `<pad>` added.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from tests import hf_fixtures
from tests.released_fixtures import (
    CLIP_MEAN,
    CLIP_STD,
    HF_IMAGE_TOKEN,
    HF_PAD_TOKEN,
    HF_VOCAB,
    TEXT,
    TOKENIZER_MODEL,
    dump_json,
    numpy_state,
    rename_keys,
)


def llava_hf_config() -> dict:
    """llava-hf/llava-1.5-7b-hf's `config.json`, its text/vision sizes written out (tiny)."""
    t, v = TEXT, hf_fixtures.VISION
    text_sizes = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_seq_length": (v["image_size"] // v["patch_size"]) ** 2,
        "image_token_index": HF_IMAGE_TOKEN,
        "model_type": "llava",
        "pad_token_id": HF_PAD_TOKEN,
        "projector_hidden_act": "gelu",
        "text_config": {
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            **{k: t[k] for k in text_sizes},
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "rms_norm_eps": 1e-05,
            "torch_dtype": "float16",
            "vocab_size": HF_VOCAB,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.36.0.dev0",
        "vision_config": {
            "hidden_size": v["hidden_size"],
            "image_size": v["image_size"],
            "intermediate_size": v["intermediate_size"],
            "model_type": "clip_vision_model",
            "num_attention_heads": v["num_attention_heads"],
            "num_hidden_layers": v["num_hidden_layers"],
            "patch_size": v["patch_size"],
            "projection_dim": 768,
            "vocab_size": 32000,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": HF_VOCAB,
    }


CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def write_llava_hf_tokenizer(directory: str) -> str:
    """llava-hf's tokenizer files: tokenizer.model + tokenizer.json, `<image>` and `<pad>` added after the vocab."""
    from transformers import AutoTokenizer

    os.makedirs(directory, exist_ok=True)
    shutil.copy(TOKENIZER_MODEL, os.path.join(directory, "tokenizer.model"))

    def added(content):
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    decoder = {"0": "<unk>", "1": "<s>", "2": "</s>", str(HF_IMAGE_TOKEN): "<image>", str(HF_PAD_TOKEN): "<pad>"}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {i: dict(added(c), special=True) for i, c in decoder.items()},
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "padding_side": "left",
        "processor_class": "LlavaProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "trust_remote_code": False,
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    dump_json(directory, "tokenizer_config.json", config)
    special = {"bos_token": added("<s>"), "eos_token": added("</s>"), "pad_token": added("<pad>")}
    special["unk_token"] = added("<unk>")
    dump_json(directory, "special_tokens_map.json", special)
    dump_json(directory, "added_tokens.json", {"<image>": HF_IMAGE_TOKEN, "<pad>": HF_PAD_TOKEN})
    # tokenizer.json as transformers writes it for this tokenizer.
    staging = directory.rstrip("/") + ".tokenizer-json"
    AutoTokenizer.from_pretrained(directory).save_pretrained(staging)
    shutil.copy(os.path.join(staging, "tokenizer.json"), os.path.join(directory, "tokenizer.json"))
    shutil.rmtree(staging)
    return directory


def write_llava_hf_release(directory: str, model) -> str:
    """llava-hf/llava-1.5-7b-hf as published: fp16 safetensors shards in the 4.3x on-disk layout + processor files."""
    from llava_jax.convert.tensors import write_safetensors

    os.makedirs(directory, exist_ok=True)
    tensors = rename_keys(
        numpy_state(model),
        {
            "model.language_model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
            "model.vision_tower.": "vision_tower.vision_model.",
            "model.multi_modal_projector.": "multi_modal_projector.",
        },
    )
    keys = sorted(tensors)
    names = [f"model-{i + 1:05d}-of-00003.safetensors" for i in range(3)]
    weight_map = {}
    for i, name in enumerate(names):
        part = {k: tensors[k].astype(np.float16) for k in keys[i::3]}
        write_safetensors(
            os.path.join(directory, name), iter(part.items()), {k: (a.shape, a.dtype) for k, a in part.items()}
        )
        weight_map.update(dict.fromkeys(part, name))
    total = sum(a.size * 2 for a in tensors.values())
    dump_json(directory, "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    dump_json(directory, "config.json", llava_hf_config())
    dump_json(
        directory,
        "generation_config.json",
        {
            "_from_model_config": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": HF_PAD_TOKEN,
            "transformers_version": "4.36.0.dev0",
        },
    )
    v = hf_fixtures.VISION
    dump_json(
        directory,
        "processor_config.json",
        {
            "image_token": "<image>",
            "num_additional_image_tokens": 1,
            "patch_size": v["patch_size"],
            "processor_class": "LlavaProcessor",
            "vision_feature_select_strategy": "default",
        },
    )
    dump_json(directory, "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    size = v["image_size"]
    dump_json(
        directory,
        "preprocessor_config.json",
        {
            "crop_size": {"height": size, "width": size},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": CLIP_MEAN,
            "image_processor_type": "CLIPImageProcessor",
            "image_std": CLIP_STD,
            "processor_class": "LlavaProcessor",
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": size},
        },
    )
    write_llava_hf_tokenizer(directory)
    return directory
