"""The published LLaVA-1.5 artifacts, file for file, at tiny size (built locally; nothing downloaded).

Each writer reproduces one released directory: the original repo's
`llava-v1.5-{7b,13b}` (flat `config.json` with `model_type: "llava"` and the
`mm_*` fields, fp16 `pytorch_model-0000k-of-0000n.bin` shards + index, the slow
LLaMA tokenizer files, `generation_config.json`), the stage-1 projector
release (`mm_projector.bin` + its `config.json`), `lmsys/vicuna-7b-v1.5`,
`openai/clip-vit-large-patch14-336` (a whole `CLIPModel` in `pytorch_model.bin`);
`tests.released_hf_fixtures` writes `llava-hf/llava-1.5-7b-hf`. Keys and values
are the published ones except the sizes.

Sizes: the towers of `tests.hf_fixtures` (CLIP 32-wide, 28 px, 4 patches; LLaMA
64-wide, 2 layers) with the vocabulary of `tests/assets/tokenizer.model` (768
pieces, a LLaMA-style sentencepiece BPE) in place of LLaMA's 32000.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from tests import hf_fixtures

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
TOKENIZER_MODEL = os.path.join(ASSETS, "tokenizer.model")
VOCAB = 768  # pieces in TOKENIZER_MODEL (LLaMA: 32000)
HF_IMAGE_TOKEN, HF_PAD_TOKEN = VOCAB, VOCAB + 1  # llava-hf: 32000, 32001
HF_VOCAB = 832  # llava-hf pads 32002 to 32064, a multiple of 64: here 770 -> 832
CLIP_HUB_NAME = "openai/clip-vit-large-patch14-336"
TEXT = dict(hf_fixtures.TEXT, vocab_size=VOCAB, num_key_value_heads=4, max_position_embeddings=4096)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def dump_json(directory: str, name: str, obj) -> None:
    with open(os.path.join(directory, name), "w") as f:
        json.dump(obj, f, indent=2)


def reference_model(seed: int = 0, *, hf_release: bool = False):
    """The tiny `LlavaForConditionalGeneration` every release is cut from, weights rounded to fp16.

    The original releases splice images at a sentinel outside the vocabulary; transformers
    needs an id inside it, so the reference uses the last id (767) and the test maps it.
    """
    if hf_release:
        model = hf_fixtures.hf_llava(
            seed,
            text=dict(TEXT, vocab_size=HF_VOCAB, pad_token_id=HF_PAD_TOKEN),
            image_token_index=HF_IMAGE_TOKEN,
        )
    else:
        model = hf_fixtures.hf_llava(seed, text=TEXT, image_token_index=VOCAB - 1)
    model = model.half().float()  # the releases are float16
    import torch

    with torch.no_grad():  # the stage-1 projector is bfloat16: these values are exact in both
        for p in model.model.multi_modal_projector.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return model


def numpy_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def rename_keys(model_state: dict, prefixes: dict[str, str]) -> dict[str, np.ndarray]:
    """Rename transformers-5 in-memory keys by prefix (first match wins); unmatched keys dropped."""
    out = {}
    for key, value in model_state.items():
        for old, new in prefixes.items():
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
    return out


def _write_bin_shards(directory: str, tensors: dict[str, np.ndarray], shards: int, dtype) -> list[str]:
    """`pytorch_model-0000k-of-0000n.bin` + `pytorch_model.bin.index.json`, as `save_pretrained` wrote them."""
    import torch

    keys = sorted(tensors)
    names = [f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin" for i in range(shards)]
    weight_map, total = {}, 0
    for i, name in enumerate(names):
        part = {}
        for key in keys[i::shards]:
            arr = tensors[key]
            t = torch.from_numpy(np.ascontiguousarray(arr))
            if t.is_floating_point():
                t = t.to(dtype)
            part[key] = t
            weight_map[key] = name
            total += t.numel() * t.element_size()
        torch.save(part, os.path.join(directory, name))
    dump_json(directory, "pytorch_model.bin.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return names


def _rotary_buffers(layers: int, head_dim: int) -> dict[str, np.ndarray]:
    """The `rotary_emb.inv_freq` buffers transformers 4.31 saved with every LLaMA layer."""
    inv = 1.0 / (10000 ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    return {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv for i in range(layers)}


def write_slow_tokenizer(directory: str, *, legacy: bool | None = False, model_max_length: int = 2048) -> str:
    """The tokenizer files of llava-v1.5-7b/13b and vicuna-7b-v1.5: slow `LlamaTokenizer`, pad = `<unk>`."""
    os.makedirs(directory, exist_ok=True)
    shutil.copy(TOKENIZER_MODEL, os.path.join(directory, "tokenizer.model"))

    def added(content, typed=True):
        token = {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
        return {"__type": "AddedToken", **token} if typed else token

    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": added("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": added("</s>"),
        "legacy": legacy,
        "model_max_length": model_max_length,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": added("<unk>"),
    }
    if legacy is None:
        del config["legacy"]
    dump_json(directory, "tokenizer_config.json", config)
    special = {"bos_token": added("<s>", False), "eos_token": added("</s>", False), "pad_token": "<unk>"}
    special["unk_token"] = added("<unk>", False)
    dump_json(directory, "special_tokens_map.json", special)
    return directory


def original_config(*, variant: str = "13b", vision_hidden: int = hf_fixtures.VISION["hidden_size"]) -> dict:
    """The original repo's `config.json` of llava-v1.5 at tiny size.

    variant "13b": the key set of the published llava-v1.5-13b config (REFERENCE.md);
    "7b-later": the same plus the keys later versions of the repo write
    (`image_grid_pinpoints`, `mm_patch_merge_type`, `mm_projector_lr`,
    `tokenizer_model_max_length`, `tokenizer_padding_side`).
    """
    t = TEXT
    config = {
        "_name_or_path": "llava-v1.5-13b" if variant == "13b" else "./checkpoints/vicuna-7b-v1-5",
        "architectures": ["LlavaLlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "freeze_mm_mlp_adapter": False,
        "freeze_mm_vision_resampler": False,
        "hidden_act": "silu",
        "hidden_size": t["hidden_size"],
        "image_aspect_ratio": "pad",
        "initializer_range": 0.02,
        "intermediate_size": t["intermediate_size"],
        "max_length": 4096,
        "max_position_embeddings": t["max_position_embeddings"],
        "mm_hidden_size": vision_hidden,
        "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": None,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": CLIP_HUB_NAME,
        "model_type": "llava",
        "num_attention_heads": t["num_attention_heads"],
        "num_hidden_layers": t["num_hidden_layers"],
        "num_key_value_heads": t["num_key_value_heads"],
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
        "vocab_size": t["vocab_size"],
    }
    if variant == "7b-later":
        config.update(
            image_grid_pinpoints=None,
            mm_patch_merge_type="flat",
            mm_projector_lr=None,
            tokenizer_model_max_length=2048,
            tokenizer_padding_side="right",
        )
    elif variant != "13b":
        raise ValueError(variant)
    return dict(sorted(config.items()))


def write_original_release(directory: str, model, *, variant: str = "13b", with_vision: bool = True) -> str:
    """llava-v1.5-{7b,13b} as released: config, two fp16 `.bin` shards + index, tokenizer, generation config."""
    import torch

    os.makedirs(directory, exist_ok=True)
    state = numpy_state(model)
    prefixes = {
        "model.language_model.": "model.",
        "lm_head.": "lm_head.",
        "model.multi_modal_projector.linear_1.": "model.mm_projector.0.",
        "model.multi_modal_projector.linear_2.": "model.mm_projector.2.",
    }
    if with_vision:
        prefixes["model.vision_tower."] = "model.vision_tower.vision_tower.vision_model."
    tensors = rename_keys(state, prefixes)
    tensors.update(_rotary_buffers(TEXT["num_hidden_layers"], TEXT["hidden_size"] // TEXT["num_attention_heads"]))
    if with_vision:
        n_pos = (hf_fixtures.VISION["image_size"] // hf_fixtures.VISION["patch_size"]) ** 2 + 1
        key = "model.vision_tower.vision_tower.vision_model.embeddings.position_ids"
        tensors[key] = np.arange(n_pos, dtype=np.int64)[None]
    _write_bin_shards(directory, tensors, 2, torch.float16)
    dump_json(directory, "config.json", original_config(variant=variant))
    dump_json(
        directory,
        "generation_config.json",
        {
            "_from_model_config": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "max_length": 4096,
            "pad_token_id": 0,
            "transformers_version": "4.31.0",
        },
    )
    write_slow_tokenizer(directory)
    return directory


def write_clip_release(directory: str, model) -> str:
    """openai/clip-vit-large-patch14-336 as published: a whole `CLIPModel` (text tower too) in `pytorch_model.bin`."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    os.makedirs(directory, exist_ok=True)
    v = hf_fixtures.VISION
    text = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)
    vision = {k: v[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")}
    vision.update(image_size=v["image_size"], patch_size=v["patch_size"], projection_dim=16)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    torch.manual_seed(1)
    clip = CLIPModel(config).eval()
    clip.vision_model.load_state_dict(model.model.vision_tower.state_dict())
    state = {k: t.detach().clone() for k, t in clip.state_dict().items()}
    # The 2021 file carries the position-id buffers too.
    state["vision_model.embeddings.position_ids"] = torch.arange((v["image_size"] // v["patch_size"]) ** 2 + 1)[None]
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    published = {
        "_name_or_path": CLIP_HUB_NAME,
        "architectures": ["CLIPModel"],
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "model_type": "clip",
        "projection_dim": 16,
        "text_config": dict(text, model_type="clip_text_model", hidden_act="quick_gelu", projection_dim=16),
        "text_config_dict": dict(text, projection_dim=16),
        "torch_dtype": "float32",
        "transformers_version": None,
        "vision_config": dict(
            vision, model_type="clip_vision_model", hidden_act="quick_gelu", layer_norm_eps=1e-05, num_channels=3
        ),
        "vision_config_dict": vision,
    }
    dump_json(directory, "config.json", published)
    size = v["image_size"]
    dump_json(
        directory,
        "preprocessor_config.json",
        {
            "crop_size": size,
            "do_center_crop": True,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD,
            "resample": 3,
            "size": size,
        },
    )
    return directory


def write_vicuna_release(directory: str, model) -> str:
    """lmsys/vicuna-7b-v1.5 as published: LLaMA config, two fp16 `.bin` shards + index, slow tokenizer."""
    import torch

    os.makedirs(directory, exist_ok=True)
    t = TEXT
    tensors = rename_keys(numpy_state(model), {"model.language_model.": "model.", "lm_head.": "lm_head."})
    tensors.update(_rotary_buffers(t["num_hidden_layers"], t["hidden_size"] // t["num_attention_heads"]))
    _write_bin_shards(directory, tensors, 2, torch.float16)
    keys = ("hidden_size", "intermediate_size", "max_position_embeddings", "num_attention_heads")
    config = {k: t[k] for k in keys}
    config.update(
        {
            "_name_or_path": "vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "initializer_range": 0.02,
            "model_type": "llama",
            "num_hidden_layers": t["num_hidden_layers"],
            "num_key_value_heads": t["num_key_value_heads"],
            "pad_token_id": 0,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": None,
            "tie_word_embeddings": False,
            "torch_dtype": "float16",
            "transformers_version": "4.31.0",
            "use_cache": True,
            "vocab_size": t["vocab_size"],
        }
    )
    dump_json(directory, "config.json", dict(sorted(config.items())))
    dump_json(
        directory,
        "generation_config.json",
        {
            "bos_token_id": 1,
            "do_sample": True,
            "eos_token_id": 2,
            "max_length": 4096,
            "pad_token_id": 0,
            "temperature": 0.9,
            "top_p": 0.6,
            "transformers_version": "4.31.0",
        },
    )
    write_slow_tokenizer(directory, model_max_length=4096)
    return directory


def write_projector_release(directory: str, model) -> str:
    """The stage-1 release (llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5): `mm_projector.bin` + config.json."""
    import torch

    os.makedirs(directory, exist_ok=True)
    tensors = rename_keys(
        numpy_state(model),
        {
            "model.multi_modal_projector.linear_1.": "model.mm_projector.0.",
            "model.multi_modal_projector.linear_2.": "model.mm_projector.2.",
        },
    )
    # Saved from a bf16 run by `get_mm_adapter_state_maybe_zero_3`.
    torch.save(
        {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()},
        os.path.join(directory, "mm_projector.bin"),
    )
    config = original_config(variant="13b")
    config.update(
        _name_or_path="lmsys/vicuna-7b-v1.5",
        image_aspect_ratio="square",
        tune_mm_mlp_adapter=True,
        use_cache=False,
        torch_dtype="bfloat16",
    )
    dump_json(directory, "config.json", config)
    dump_json(directory, "trainer_state.json", {"epoch": 1.0, "global_step": 2181, "log_history": []})
    return directory
