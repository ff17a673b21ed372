"""HF transformers and original-LLaVA `config.json` dicts <-> `LlavaConfig`.

`llava_config_from_hf` reads an HF `LlavaConfig` dict or the original LLaVA
repo's flat `config.json` (LLaMA fields plus `mm_*` fields); `llava_config_to_hf`
writes the HF form. `llama_config_from_hf` / `vision_config_from_hf` read the
component configs of HF LLaMA and CLIP directories.
"""

from __future__ import annotations

from collections.abc import Mapping

from llava_jax.config import (
    SUPPORTED_ROPE_TYPES,
    ConfigError,
    LlamaConfig,
    LlavaConfig,
    RopeScaling,
    VisionConfig,
    compose_llava,
)
from llava_jax.presets import clip_vit_l14_336


def config_kind(hf: Mapping) -> str:
    """'hf' for an HF LlavaConfig dict, 'original' for the LLaVA repo's; else `ConfigError`."""
    if hf.get("model_type") == "llava" or "text_config" in hf:
        return "hf"
    if "mm_hidden_size" in hf or "mm_vision_tower" in hf or "mm_projector_type" in hf:
        return "original"
    raise ConfigError(
        "config is neither an HF LlavaConfig (model_type 'llava') nor an original LLaVA config (mm_* fields)"
    )


def _rope_from_hf(text: Mapping) -> tuple[float, RopeScaling]:
    params = text.get("rope_parameters")
    legacy = text.get("rope_scaling")
    theta = float(text.get("rope_theta", 10000.0))
    if params:
        theta = float(params.get("rope_theta", theta))
        scaling = params
    else:
        scaling = legacy or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"rope scaling type {rope_type!r} is not supported (supported: {SUPPORTED_ROPE_TYPES})")
    return theta, RopeScaling(
        rope_type=rope_type,
        factor=float(scaling.get("factor", 1.0) or 1.0),
        original_max_position_embeddings=scaling.get("original_max_position_embeddings"),
        low_freq_factor=scaling.get("low_freq_factor"),
        high_freq_factor=scaling.get("high_freq_factor"),
    )


def _first_int(value):
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def llama_config_from_hf(text: Mapping) -> LlamaConfig:
    """`LlamaConfig` from an HF LLaMA `config.json` dict (or a LLaVA `text_config`)."""
    act = text.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"LLaMA hidden_act {act!r} is not supported (only 'silu')")
    if text.get("pretraining_tp", 1) not in (1, None):
        raise ConfigError("pretraining_tp != 1 is not supported")
    heads = int(text.get("num_attention_heads", 32))
    hidden = int(text.get("hidden_size", 4096))
    theta, scaling = _rope_from_hf(text)
    return LlamaConfig(
        vocab_size=int(text.get("vocab_size", 32000)),
        hidden_size=hidden,
        intermediate_size=int(text.get("intermediate_size", 11008)),
        num_layers=int(text.get("num_hidden_layers", 32)),
        num_heads=heads,
        num_kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or hidden // heads),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(text.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        attention_bias=bool(text.get("attention_bias", False)),
        mlp_bias=bool(text.get("mlp_bias", False)),
        bos_token_id=_first_int(text.get("bos_token_id", 1)),
        eos_token_id=_first_int(text.get("eos_token_id", 2)),
        pad_token_id=_first_int(text.get("pad_token_id")),
    )


def vision_config_from_hf(vision: Mapping) -> VisionConfig:
    """`VisionConfig` from an HF CLIP vision config dict (or a whole `CLIPConfig` dict)."""
    if "vision_config" in vision:
        vision = vision["vision_config"]
    return VisionConfig(
        hidden_size=int(vision.get("hidden_size", 768)),
        intermediate_size=int(vision.get("intermediate_size", 3072)),
        num_layers=int(vision.get("num_hidden_layers", 12)),
        num_heads=int(vision.get("num_attention_heads", 12)),
        image_size=int(vision.get("image_size", 224)),
        patch_size=int(vision.get("patch_size", 32)),
        num_channels=int(vision.get("num_channels", 3)),
        layer_norm_eps=float(vision.get("layer_norm_eps", 1e-5)),
        hidden_act=vision.get("hidden_act", "quick_gelu"),
    )


def _from_hf_llava(hf: Mapping) -> LlavaConfig:
    text = dict(hf.get("text_config") or {})
    if "tie_word_embeddings" in hf and "tie_word_embeddings" not in text:
        text["tie_word_embeddings"] = hf["tie_word_embeddings"]
    text_type = text.get("model_type", "llama")
    if text_type not in ("llama",):
        raise ConfigError(f"text_config model_type {text_type!r} is not supported (only 'llama')")
    vision_d = hf.get("vision_config") or {}
    if vision_d.get("model_type", "clip_vision_model") not in ("clip_vision_model", "clip"):
        raise ConfigError(f"vision_config model_type {vision_d.get('model_type')!r} is not supported (only CLIP)")
    vision = vision_config_from_hf({"image_size": 336, "patch_size": 14, **vision_d})
    config = compose_llava(
        vision,
        llama_config_from_hf(text),
        feature_layer=hf.get("vision_feature_layer", -2),
        strategy=hf.get("vision_feature_select_strategy", "default"),
        image_token_index=int(hf.get("image_token_index", hf.get("image_token_id", 32000))),
        projector_act=hf.get("projector_hidden_act", "gelu"),
        projector_bias=bool(hf.get("multimodal_projector_bias", True)),
        aspect="pad",
    )
    if "image_seq_length" in hf and int(hf["image_seq_length"]) != config.image_seq_length:
        raise ConfigError(
            f"image_seq_length {hf['image_seq_length']} disagrees with the vision tower "
            f"({config.image_seq_length} tokens per image)"
        )
    return config


def _from_original(hf: Mapping, vision_hf: Mapping | None) -> LlavaConfig:
    projector_type = hf.get("mm_projector_type", "linear")
    if projector_type != "mlp2x_gelu":
        raise ConfigError(f"mm_projector_type {projector_type!r} is not supported (only 'mlp2x_gelu')")
    select = hf.get("mm_vision_select_feature", "patch")
    strategy = {"patch": "default", "cls_patch": "full"}.get(select)
    if strategy is None:
        raise ConfigError(f"mm_vision_select_feature {select!r} not in ('patch', 'cls_patch')")
    vision = vision_config_from_hf(vision_hf) if vision_hf else clip_vit_l14_336()
    if int(hf.get("mm_hidden_size", vision.hidden_size)) != vision.hidden_size:
        raise ConfigError(f"mm_hidden_size {hf['mm_hidden_size']} != vision hidden size {vision.hidden_size}")
    return compose_llava(
        vision,
        llama_config_from_hf(hf),
        feature_layer=int(hf.get("mm_vision_select_layer", -2)),
        strategy=strategy,
        # The original repo splices at a sentinel (-200); llava_jax uses the first id past the vocabulary.
        image_token_index=int(hf.get("vocab_size", 32000)),
        projector_act="gelu",
        projector_bias=True,
        aspect=hf.get("image_aspect_ratio", "pad") or "square",
    )


def llava_config_from_hf(hf: Mapping, *, vision_hf: Mapping | None = None) -> LlavaConfig:
    """`LlavaConfig` from an HF `LlavaConfig` dict, or an original LLaVA repo `config.json` dict.

    For original-repo configs the vision tower config is not inside the file:
    pass `vision_hf` (the CLIP `config.json` dict) or get CLIP ViT-L/14-336.
    """
    kind = config_kind(hf)
    return _from_hf_llava(hf) if kind == "hf" else _from_original(hf, vision_hf)


def llava_config_to_hf(config: LlavaConfig) -> dict:
    """HF transformers `LlavaConfig` dict (what `config.json` of a llava-hf directory holds)."""
    v, t = config.vision, config.llm
    rope = {"rope_type": t.rope_scaling.rope_type, "rope_theta": t.rope_theta}
    if t.rope_scaling.rope_type != "default":
        rope["factor"] = t.rope_scaling.factor
        for key in ("original_max_position_embeddings", "low_freq_factor", "high_freq_factor"):
            if getattr(t.rope_scaling, key) is not None:
                rope[key] = getattr(t.rope_scaling, key)
    layer = config.vision_feature_layer
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": config.image_token_index,
        "image_seq_length": config.image_seq_length,
        "projector_hidden_act": config.projector.hidden_act,
        "multimodal_projector_bias": config.projector.use_bias,
        "vision_feature_layer": list(layer) if isinstance(layer, tuple) else layer,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "tie_word_embeddings": t.tie_word_embeddings,
        "dtype": t.param_dtype,
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_layers,
            "num_attention_heads": v.num_heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": v.num_channels,
            "layer_norm_eps": v.layer_norm_eps,
            "hidden_act": v.hidden_act,
            "projection_dim": 768,
        },
        "text_config": {
            "model_type": "llama",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads,
            "num_key_value_heads": t.num_kv_heads,
            "head_dim": t.head_dim,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_parameters": rope,
            "max_position_embeddings": t.max_position_embeddings,
            "tie_word_embeddings": t.tie_word_embeddings,
            "attention_bias": t.attention_bias,
            "mlp_bias": t.mlp_bias,
            "hidden_act": "silu",
            "bos_token_id": t.bos_token_id,
            "eos_token_id": t.eos_token_id,
            "pad_token_id": t.pad_token_id,
        },
    }
