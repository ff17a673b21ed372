"""Export a loaded model to an HF transformers LLaVA directory (safetensors + config + tokenizer)."""

from __future__ import annotations

import json
import os

import numpy as np

from llava_jax.convert.hf import write_hf_weights
from llava_jax.convert.hf_config import llava_config_to_hf
from llava_jax.convert.tensors import CheckpointError
from llava_jax.data.image import CLIP_MEAN, CLIP_STD
from llava_jax.data.sentencepiece_tokens import save_tokenizer


def _processor_files(model, directory: str) -> None:
    """Image-processor and processor configs so `AutoProcessor.from_pretrained(directory)` works."""
    c = model.config
    size = c.vision.image_size
    processor_class = "LlavaNextProcessor" if c.anyres else "LlavaProcessor"
    image_processor = {
        "image_processor_type": "LlavaNextImageProcessor" if c.anyres else "CLIPImageProcessor",
        "processor_class": processor_class,
        "do_resize": True,
        "size": {"shortest_edge": size},
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
        "resample": 3,
    }
    if c.anyres:
        image_processor.update(image_grid_pinpoints=[list(p) for p in c.image_grid_pinpoints], do_pad=True)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump(image_processor, f, indent=2)
    processor = {
        "processor_class": processor_class,
        "image_token": "<image>",
        "patch_size": c.vision.patch_size,
        "vision_feature_select_strategy": c.vision_feature_select_strategy,
        "num_additional_image_tokens": 1,
    }
    with open(os.path.join(directory, "processor_config.json"), "w") as f:
        json.dump(processor, f, indent=2)


def export_hf(model, directory: str, *, dtype=None) -> None:
    """Write `model` (a `llava_jax.Llava`) as an HF LLaVA directory.

    `LlavaForConditionalGeneration.from_pretrained(directory)` loads it and gives
    the same logits (`LlavaNextForConditionalGeneration` for an anyres model, whose
    tile merge must be `spatial_unpad`: a `flat` one is a `ConfigError` before
    anything is written). Tokenizer and processor files are written when the model
    has a tokenizer. Weights are streamed one tensor at a time.

    Args:
      model: the loaded model.
      directory: output directory (created; must not already hold weights).
      dtype: tensor dtype on disk (default: the parameters' dtype).
    """
    config = model.config
    hf = llava_config_to_hf(config)
    os.makedirs(directory, exist_ok=True)
    if any(name.endswith((".safetensors", ".bin")) for name in os.listdir(directory)):
        raise CheckpointError(f"{directory}: already holds weight files; refusing to overwrite")
    dtype = None if dtype is None else np.dtype(dtype)
    if dtype is not None:
        hf["dtype"] = str(dtype)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    generation = {
        "bos_token_id": config.llm.bos_token_id,
        "eos_token_id": config.llm.eos_token_id,
        "pad_token_id": config.llm.pad_token_id,
    }
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump({k: v for k, v in generation.items() if v is not None}, f, indent=2)
    write_hf_weights(model.params, config, directory, dtype=dtype)
    if model.tokenizer is not None:
        save_tokenizer(model.tokenizer, directory)
        _processor_files(model, directory)
