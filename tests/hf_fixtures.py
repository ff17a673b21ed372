"""Tiny random HF transformers models, built and saved locally by tests (nothing downloaded)."""

from __future__ import annotations

import os

VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=28,
    patch_size=14,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    head_dim=16,
)


def hf_llava_config(*, vision=None, text=None, **top):
    """A tiny `transformers.LlavaConfig` (image token = last vocab id, 4 patches per image)."""
    from transformers import LlavaConfig

    text = {**TEXT, **(text or {})}
    kw = dict(
        image_token_index=text["vocab_size"] - 1,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    kw.update(top)
    vision = {**VISION, **(vision or {})}
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    kw.setdefault("image_seq_length", patches + (kw["vision_feature_select_strategy"] == "full"))
    return LlavaConfig(vision_config=vision, text_config=text, **kw)


def hf_llava(seed: int = 0, **kw):
    """A random tiny `LlavaForConditionalGeneration` in float32 eval mode, with non-trivial norms."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(hf_llava_config(**kw)).eval()
    perturb_norms(model, seed)
    return model


def perturb_norms(model, seed: int = 0):
    """Random norm weights/biases and embeddings (HF initialises norms to 1/0, hiding layout bugs)."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "class_embedding" in name or name.endswith(".bias"):
                p.copy_(p + 0.1 * torch.randn(p.shape, generator=g))
    return model


def save(model, directory: str, safe: bool = True) -> str:
    """save_pretrained into `directory` (safetensors, or `.bin` when `safe` is False)."""
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=safe)
    return directory


def random_inputs(config, batch: int = 2, length: int = 12, images_per_row=(1, 1), seed: int = 0):
    """input_ids int64[B, T] with placeholders, pixel_values float32[N, 3, S, S], attention_mask[B, T]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    image_token = config.image_token_index
    vocab = config.text_config.vocab_size
    per = config.image_seq_length
    ids = rng.integers(3, vocab - 1, size=(batch, length))
    for b, n in enumerate(images_per_row):
        starts = [1 + i * (per + 2) for i in range(n)]
        for s in starts:
            ids[b, s : s + per] = image_token
    s = config.vision_config.image_size
    pixels = rng.standard_normal((sum(images_per_row), 3, s, s)).astype(np.float32)
    mask = np.ones((batch, length), np.int64)
    return ids, pixels, mask


# LLaVA-NeXT's released grid scaled to the 28-px tiny tower: up to 2x2 or 1x3 tiles.
NEXT_PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]


def hf_llava_next_config(*, vision=None, text=None, **top):
    """A tiny `transformers.LlavaNextConfig` (28-px tiles of 4 tokens, `NEXT_PINPOINTS`)."""
    from transformers import LlavaNextConfig

    text = {**TEXT, **(text or {})}
    kw = dict(
        image_token_index=text["vocab_size"] - 1,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_grid_pinpoints=NEXT_PINPOINTS,
    )
    kw.update(top)
    vision = {**VISION, **(vision or {})}
    kw.setdefault("image_seq_length", (vision["image_size"] // vision["patch_size"]) ** 2)
    return LlavaNextConfig(vision_config=vision, text_config=text, **kw)


def hf_llava_next(seed: int = 0, **kw):
    """A random tiny `LlavaNextForConditionalGeneration` in float32 eval mode, with non-trivial norms."""
    import torch
    from transformers import LlavaNextForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(hf_llava_next_config(**kw)).eval()
    perturb_norms(model, seed)
    return model


def hf_next_image_processor(config):
    """transformers' PIL-backend LLaVA-NeXT image processor for `config` (tiles at the tower's size)."""
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    s = config.vision_config.image_size
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": s},
        crop_size={"height": s, "width": s},
        image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints],
    )
