"""Named model presets: LLaVA-1.5 7B/13B and -HD, LLaVA-NeXT (v1.6) Vicuna, the benchmark and test shapes, the demo.

`PRESETS` maps each name to a function returning a `LlavaConfig`; experiment
configs name one (`init.preset = "tiny"`).
"""

from __future__ import annotations

import dataclasses

from llava_jax.config import LlamaConfig, LlavaConfig, VisionConfig, compose_llava


def clip_vit_l14_336() -> VisionConfig:
    """OpenAI CLIP ViT-L/14 at 336 px (LLaVA-1.5's vision tower)."""
    return VisionConfig()


def _llava(llm: LlamaConfig, vocab_size: int) -> LlavaConfig:
    llm = dataclasses.replace(llm, vocab_size=vocab_size)
    return compose_llava(
        clip_vit_l14_336(),
        llm,
        image_token_index=32000,
    )


def vicuna_7b() -> LlamaConfig:
    """Vicuna-7B v1.5: 32 layers, d 4096, MLP 11008, 32 heads."""
    return LlamaConfig(max_position_embeddings=4096, rms_norm_eps=1e-5)


def vicuna_13b() -> LlamaConfig:
    """Vicuna-13B v1.5: 40 layers, d 5120, MLP 13824, 40 heads."""
    return LlamaConfig(
        hidden_size=5120,
        intermediate_size=13824,
        num_layers=40,
        num_heads=40,
        num_kv_heads=40,
        head_dim=128,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )


def llava_v15_7b(vocab_size: int = 32000) -> LlavaConfig:
    """LLaVA-1.5-7B (vocab 32000 original, 32064 for llava-hf)."""
    return _llava(vicuna_7b(), vocab_size)


def llava_v15_13b(vocab_size: int = 32000) -> LlavaConfig:
    """LLaVA-1.5-13B (vocab 32000 original, 32064 for llava-hf)."""
    return _llava(vicuna_13b(), vocab_size)


# LLaVA-NeXT's released grid (llava-v1.6-*, (height, width)): up to 2x2 or 1x3 tiles of 336 px.
V16_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
# LLaVA-1.5-HD: the paper splits an image into a grid of tiles at the tower's resolution; the
# grids here are the ones up to 2x2 (672 px), our choice (the paper lists no candidate set).
HD_PINPOINTS = ((336, 672), (672, 336), (672, 672))


def with_anyres(config: LlavaConfig, pinpoints=V16_PINPOINTS, patch_merge_type: str = "spatial_unpad") -> LlavaConfig:
    """`config` taking high-resolution images: anyres tiles over `pinpoints` merged by `patch_merge_type`."""
    return dataclasses.replace(
        config,
        image_aspect_ratio="anyres",
        image_grid_pinpoints=tuple(tuple(p) for p in pinpoints),
        patch_merge_type=patch_merge_type,
    )


def llava_v15_hd_7b(vocab_size: int = 32000) -> LlavaConfig:
    """LLaVA-1.5-HD-7B: LLaVA-1.5-7B with tiles up to 2x2 of 336 px, a global view and row newlines."""
    return with_anyres(llava_v15_7b(vocab_size), HD_PINPOINTS)


def llava_v15_hd_13b(vocab_size: int = 32000) -> LlavaConfig:
    """LLaVA-1.5-HD-13B: LLaVA-1.5-13B with tiles up to 2x2 of 336 px, a global view and row newlines."""
    return with_anyres(llava_v15_13b(vocab_size), HD_PINPOINTS)


def llava_v16_vicuna_7b(vocab_size: int = 32000) -> LlavaConfig:
    """llava-v1.6-vicuna-7b shapes (vocab 32000 original, 32064 for llava-hf's llava-v1.6-vicuna-7b-hf)."""
    return with_anyres(llava_v15_7b(vocab_size), V16_PINPOINTS)


def llava_v16_vicuna_13b(vocab_size: int = 32000) -> LlavaConfig:
    """llava-v1.6-vicuna-13b shapes (vocab 32000 original, 32064 for llava-hf's llava-v1.6-vicuna-13b-hf)."""
    return with_anyres(llava_v15_13b(vocab_size), V16_PINPOINTS)


def bench_small(vocab_size: int = 32064) -> LlavaConfig:
    """The `bench-small` shape: 6-layer 384-wide ViT at 224 px, 8-layer 1024-wide LLM."""
    vision = VisionConfig(
        hidden_size=384, intermediate_size=1536, num_layers=6, num_heads=6, image_size=224, patch_size=14
    )
    llm = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=1024,
        intermediate_size=2816,
        num_layers=8,
        num_heads=16,
        num_kv_heads=16,
        head_dim=64,
        max_position_embeddings=4096,
    )
    return compose_llava(
        vision,
        llm,
        image_token_index=32000,
    )


def tiny(
    vocab_size: int = 256, image_token_index: int | None = None, num_kv_heads: int = 2, image_size: int = 28
) -> LlavaConfig:
    """A tiny random-weight LLaVA for tests: 28-px images (4 image tokens) by default."""
    vision = VisionConfig(
        hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4, image_size=image_size, patch_size=14
    )
    llm = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=num_kv_heads,
        head_dim=16,
        max_position_embeddings=512,
    )
    return compose_llava(
        vision,
        llm,
        image_token_index=vocab_size - 1 if image_token_index is None else image_token_index,
    )


# The demo model: learns the synthetic shapes task (`llava_jax.demo`) on a CPU in minutes.
SYNTHETIC_VOCAB = 832  # the synthetic tokenizer has 770 ids; padded to a multiple of 64
SYNTHETIC_IMAGE_TOKEN = 768  # `<image>` in the synthetic tokenizer


def demo(
    vocab_size: int = SYNTHETIC_VOCAB, image_token_index: int = SYNTHETIC_IMAGE_TOKEN, image_size: int = 56
) -> LlavaConfig:
    """The demo LLaVA: ViT 3 x 128 at 56 px (patch 14: 16 image tokens) + LLaMA 3 x 64 (MLP 256, 4 heads).

    About 1M parameters: fast enough on a CPU for the ~2000 steps that binding
    words to image tokens takes (bench/RESULTS.md); the vocabulary is the
    synthetic tokenizer's (770 ids, padded to 832) with `<image>` = 768.
    """
    vision = VisionConfig(
        hidden_size=128, intermediate_size=512, num_layers=3, num_heads=4, image_size=image_size, patch_size=14
    )
    llm = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_layers=3,
        num_heads=4,
        num_kv_heads=4,
        head_dim=16,
        max_position_embeddings=512,
    )
    return compose_llava(vision, llm, image_token_index=image_token_index)


PRESETS = {
    "llava_v15_7b": llava_v15_7b,
    "llava_v15_13b": llava_v15_13b,
    "llava_v15_hd_7b": llava_v15_hd_7b,
    "llava_v15_hd_13b": llava_v15_hd_13b,
    "llava_v16_vicuna_7b": llava_v16_vicuna_7b,
    "llava_v16_vicuna_13b": llava_v16_vicuna_13b,
    "bench_small": bench_small,
    "tiny": tiny,
    "demo": demo,
}
