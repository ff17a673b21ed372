"""Model FLOPs per training step and MFU (the formula of shared/REFERENCE.md).

Per token, with N the matmul parameters a token passes through:
  trained weights 6N (forward 2N + backward 4N); frozen weights that gradients
  still flow through (the stage-1 LLM, or LoRA's base weights) 4N; frozen with no
  gradient flow (the vision tower) 2N per image token.
Causal attention adds 6 * layers * d * T per trained-LLM token (2 * ... forward
only), bidirectional vision attention 2 * layers * d * P per image token.
"""

from __future__ import annotations

from llava_jax.config import LlavaConfig

# Dense bf16 peaks (FLOP/s) by `device_kind` substring, most specific first.
PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
)


def peak_flops(device_kind: str, override: float | None = None) -> float | None:
    """Peak FLOP/s of one device of `device_kind` (None when unknown and not overridden)."""
    if override:
        return float(override)
    for name, peak in PEAK_FLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def matmul_params(config: LlavaConfig) -> dict[str, int]:
    """Matmul parameter counts per part (embedding lookups excluded, the LM head included)."""
    v, t, p = config.vision, config.llm, config.projector
    vision_layer = 4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size
    patch = v.patch_size**2 * v.num_channels * v.hidden_size
    q = t.hidden_size * t.num_heads * t.head_dim
    kv = 2 * t.hidden_size * t.num_kv_heads * t.head_dim
    llm_layer = 2 * q + kv + 3 * t.hidden_size * t.intermediate_size
    lora = 0
    if t.lora_rank:
        lora_layer = t.lora_rank * (
            2 * (t.hidden_size + t.num_heads * t.head_dim)
            + 2 * (t.hidden_size + t.num_kv_heads * t.head_dim)
            + 3 * (t.hidden_size + t.intermediate_size)
        )
        lora = t.num_layers * lora_layer
    return {
        "vision": config.vision_layers_used * vision_layer + patch,
        "projector": p.in_features * p.out_features + p.out_features**2,
        "llm": t.num_layers * llm_layer + t.hidden_size * t.vocab_size,
        "lora": lora,
    }


def train_step_flops(config: LlavaConfig, *, tokens: int, images: int, seq_len: int, llm_trained: bool) -> float:
    """Model FLOPs of one optimizer step.

    Args:
      tokens: LLM tokens processed (non-padding, image tokens included).
      images: images encoded.
      seq_len: row length T (attention cost grows with it).
      llm_trained: the LLM's weights are trained (stage 2) rather than frozen (stage 1, LoRA base).
    """
    n = matmul_params(config)
    v, t = config.vision, config.llm
    vision_tokens = images * (v.num_patches + 1)
    vision = (
        2 * n["vision"] * vision_tokens
        + 2 * config.vision_layers_used * v.hidden_size * (v.num_patches + 1) * vision_tokens
    )
    projector = 6 * n["projector"] * images * config.image_seq_length
    llm_factor = 6 if llm_trained else 4
    llm = llm_factor * n["llm"] * tokens + 6 * n["lora"] * tokens
    attention = 6 * t.num_layers * t.num_heads * t.head_dim * seq_len * tokens
    return float(vision + projector + llm + attention)
