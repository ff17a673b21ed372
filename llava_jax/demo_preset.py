"""The `demo` model preset: a small LLaVA that learns the synthetic shapes task on a CPU in minutes.

A 3-layer ViT (feature layer -2, so 2 layers run) 128 wide at 56 px with patch 14
(16 image tokens) and a 3-layer LLaMA 64 wide (fast enough on a CPU for the
~2000 steps that binding words to image tokens takes, see bench/RESULTS.md), with the synthetic
tokenizer's vocabulary (770 ids, padded to 832) and `<image>` = 768.
`register()` adds it to `llava_jax.config.PRESETS` as `"demo"` so experiment
files can name it (`init.preset = "demo"`).
"""

from __future__ import annotations

from llava_jax.config import PRESETS, LlamaConfig, LlavaConfig, VisionConfig, _compose

SYNTHETIC_VOCAB = 832  # the synthetic tokenizer has 770 ids; padded to a multiple of 64
SYNTHETIC_IMAGE_TOKEN = 768  # `<image>` in the synthetic tokenizer


def demo(
    vocab_size: int = SYNTHETIC_VOCAB, image_token_index: int = SYNTHETIC_IMAGE_TOKEN, image_size: int = 56
) -> LlavaConfig:
    """The demo LLaVA: ViT 3 x 128 (patch 14) + LLaMA 3 x 64 (MLP 256, 4 heads), ~1M parameters."""
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
    return _compose(
        vision,
        llm,
        feature_layer=-2,
        strategy="default",
        image_token_index=image_token_index,
        projector_act="gelu",
        projector_bias=True,
        aspect="pad",
    )


def register() -> None:
    """Make `"demo"` a preset name (a no-op when `llava_jax.config` already has one)."""
    PRESETS.setdefault("demo", demo)
