"""HF transformers and original-LLaVA `config.json` dicts <-> `LlavaConfig`.

`llava_config_from_hf` reads an HF `LlavaConfig` or `LlavaNextConfig` dict or
the original LLaVA repo's flat `config.json` (LLaMA fields plus `mm_*` fields,
LLaVA-1.5 and the v1.6 `anyres` form); `llava_config_to_hf` writes the HF form
(`LlavaNextConfig` for anyres models). `llama_config_from_hf` / `vision_config_from_hf` read the
component configs of HF LLaMA and CLIP directories.
"""

from __future__ import annotations

import ast
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

# The original repo's LLaMA class (LLaVA-1.5, and v1.6 with anyres); transformers' LLaVA and LLaVA-NeXT
# classes. Other LLaVA classes (the repo's MPT / Mistral variants) are named in the error rather than misread.
ORIGINAL_ARCHITECTURES = ("LlavaLlamaForCausalLM",)
HF_ARCHITECTURES = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration")
# transformers' `LlavaNextConfig` default grid (height, width), used when a config omits it.
HF_NEXT_DEFAULT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
# CLIP towers whose architecture is known without their config.json (by `mm_vision_tower`).
KNOWN_VISION_TOWERS = {"openai/clip-vit-large-patch14-336": clip_vit_l14_336}


def _layout_found(hf: Mapping) -> str:
    mm = sorted(k for k in hf if k.startswith("mm_"))
    return (
        f"found architectures={list(hf.get('architectures') or [])}, model_type={hf.get('model_type')!r}, "
        f"mm_* fields={mm or 'none'}, text_config={'present' if 'text_config' in hf else 'absent'}"
    )


def config_kind(hf: Mapping) -> str:
    """'hf' for transformers' `LlavaConfig` dict, 'original' for the LLaVA repo's flat one; else `ConfigError`.

    Decided by `architectures`, the `mm_*` fields and the presence of `text_config`,
    never by `model_type` alone: the released llava-v1.5-7b/13b configs say
    `model_type: "llava"`, the same string as transformers' LlavaConfig. Some
    original-repo checkpoints saved with newer transformers carry a stub
    `text_config` beside their flat fields; `architectures` decides those.
    """
    archs = [str(a) for a in hf.get("architectures") or []]
    has_mm = any(k in hf for k in ("mm_vision_tower", "mm_hidden_size", "mm_projector_type"))
    has_text = isinstance(hf.get("text_config"), Mapping)
    original = any(a in ORIGINAL_ARCHITECTURES for a in archs)
    transformers_class = any(a in HF_ARCHITECTURES for a in archs)
    if original and transformers_class:
        raise ConfigError(f"config names both the original and the transformers LLaVA classes; {_layout_found(hf)}")
    if original:
        if not has_mm:
            raise ConfigError(f"config names {ORIGINAL_ARCHITECTURES[0]} but has no mm_* fields; {_layout_found(hf)}")
        return "original"
    if transformers_class:
        if not has_text:
            named = next(a for a in archs if a in HF_ARCHITECTURES)
            raise ConfigError(f"config names {named} but has no text_config; {_layout_found(hf)}")
        return "hf"
    if archs:
        hint = ""
        if any(a in ("LlamaForCausalLM", "CLIPModel", "CLIPVisionModel") for a in archs):
            hint = " (a component: join CLIP + LLaMA with load_components(vision_dir, llm_dir, projector=...))"
        raise ConfigError(
            f"config is neither an HF LLaVA / LLaVA-NeXT config ({' / '.join(HF_ARCHITECTURES)}) nor an "
            f"original LLaVA config ({ORIGINAL_ARCHITECTURES[0]}){hint}; {_layout_found(hf)}"
        )
    if has_mm and not has_text:
        return "original"
    if has_text and not has_mm:
        return "hf"
    raise ConfigError(
        "config is neither an HF LlavaConfig (text_config, no mm_* fields) nor an original LLaVA config "
        f"(mm_* fields); {_layout_found(hf)}"
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


def _int(d: Mapping, key: str, default):
    """`d[key]` (or `default`) as an int; `ConfigError` naming the key for anything but a whole number."""
    value = d.get(key, default)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{key}={value!r} is not an integer")


def _float(d: Mapping, key: str, default) -> float:
    """`d[key]` (or `default`) as a float; `ConfigError` naming the key for anything but a number."""
    value = d.get(key, default)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{key}={value!r} is not a number")


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
    heads = _int(text, "num_attention_heads", 32)
    hidden = _int(text, "hidden_size", 4096)
    if heads is None or heads < 1:
        raise ConfigError(f"num_attention_heads={heads!r} must be at least 1")
    theta, scaling = _rope_from_hf(text)
    return LlamaConfig(
        vocab_size=_int(text, "vocab_size", 32000),
        hidden_size=hidden,
        intermediate_size=_int(text, "intermediate_size", 11008),
        num_layers=_int(text, "num_hidden_layers", 32),
        num_heads=heads,
        num_kv_heads=_int(text, "num_key_value_heads", None) or heads,
        head_dim=_int(text, "head_dim", None) or hidden // heads,
        rms_norm_eps=_float(text, "rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=_int(text, "max_position_embeddings", 2048),
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
        hidden_size=_int(vision, "hidden_size", 768),
        intermediate_size=_int(vision, "intermediate_size", 3072),
        num_layers=_int(vision, "num_hidden_layers", 12),
        num_heads=_int(vision, "num_attention_heads", 12),
        image_size=_int(vision, "image_size", 224),
        patch_size=_int(vision, "patch_size", 32),
        num_channels=_int(vision, "num_channels", 3),
        layer_norm_eps=_float(vision, "layer_norm_eps", 1e-5),
        hidden_act=vision.get("hidden_act", "quick_gelu"),
    )


def _is_llava_next(hf: Mapping) -> bool:
    archs = [str(a) for a in hf.get("architectures") or []]
    return hf.get("model_type") == "llava_next" or "LlavaNextForConditionalGeneration" in archs


def _pinpoints(value, *, where: str, width_first: bool) -> tuple[tuple[int, int], ...]:
    """Grid pinpoints as (height, width) pairs from a config value (a list, or its repr as a string)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)  # the original repo accepts the CLI's string form
        except (ValueError, SyntaxError):
            raise ConfigError(f"{where} {value!r} is not a list of (height, width) pairs") from None
    try:
        pairs = tuple((int(a), int(b)) for a, b in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} {value!r} is not a list of (height, width) pairs") from None
    if not pairs:
        raise ConfigError(f"{where} is empty")
    # The original repo lists (width, height), the order of PIL's `image.size`; transformers (height, width).
    return tuple((b, a) for a, b in pairs) if width_first else pairs


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
        **(_next_settings(hf) if _is_llava_next(hf) else {"aspect": "pad"}),
    )
    if "image_seq_length" in hf and int(hf["image_seq_length"]) != config.image_seq_length:
        raise ConfigError(
            f"image_seq_length {hf['image_seq_length']} disagrees with the vision tower "
            f"({config.image_seq_length} tokens per image)"
        )
    return config


def _next_settings(hf: Mapping) -> dict:
    """`compose_llava` keywords of a `LlavaNextConfig`: anyres over its pinpoints, spatial_unpad."""
    raw = hf.get("image_grid_pinpoints")
    pins = (
        HF_NEXT_DEFAULT_PINPOINTS if raw is None else _pinpoints(raw, where="image_grid_pinpoints", width_first=False)
    )
    return {"aspect": "anyres", "grid_pinpoints": pins, "patch_merge_type": "spatial_unpad"}


def _original_vision(hf: Mapping, vision_hf: Mapping | None) -> VisionConfig:
    if vision_hf:
        return vision_config_from_hf(vision_hf)
    tower = hf.get("mm_vision_tower") or hf.get("vision_tower") or "openai/clip-vit-large-patch14-336"
    if tower not in KNOWN_VISION_TOWERS:
        raise ConfigError(
            f"mm_vision_tower {tower!r} is not a CLIP tower known here: pass vision_tower= a local copy of "
            f"{tower!r} (an HF CLIP directory; CLI --vision-tower)"
        )
    return KNOWN_VISION_TOWERS[tower]()


def original_llava_config(hf: Mapping, vision_hf: Mapping | None = None) -> LlavaConfig:
    """`LlavaConfig` from the original LLaVA repo's flat `config.json` (LLaMA fields + `mm_*`).

    The vision tower is described by `vision_hf` (the CLIP `config.json` dict); without
    it, by the known architecture of the tower `mm_vision_tower` names. Fields the
    model does not depend on (training flags, `tokenizer_*`, `mm_projector_lr`, ...)
    are ignored. LLaVA-v1.6's form is read too: `image_aspect_ratio: anyres` with
    `image_grid_pinpoints` (the repo's (width, height) pairs, turned into (height,
    width)) and `mm_patch_merge_type` `spatial_unpad` or `flat`. Settings neither
    uses (image start/end tokens, other projectors, aspect modes or patch merges)
    are a `ConfigError`.
    """
    projector_type = hf.get("mm_projector_type", "linear")
    if projector_type != "mlp2x_gelu":
        raise ConfigError(f"mm_projector_type {projector_type!r} is not supported (only 'mlp2x_gelu')")
    select = hf.get("mm_vision_select_feature", "patch")
    strategy = {"patch": "default", "cls_patch": "full"}.get(select)
    if strategy is None:
        raise ConfigError(f"mm_vision_select_feature {select!r} not in ('patch', 'cls_patch')")
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if hf.get(flag):
            raise ConfigError(f"{flag}: true is not supported (LLaVA-1.5 has no image start/end or patch tokens)")
    merge = hf.get("mm_patch_merge_type") or "flat"
    # The reference's `process_images` pads for 'pad' and uses the CLIP processor alone otherwise.
    aspect = hf.get("image_aspect_ratio") or "square"
    if aspect not in ("pad", "square", "anyres"):
        raise ConfigError(f"image_aspect_ratio {aspect!r} is not supported (only 'pad', 'square' and 'anyres')")
    anyres = {}
    if aspect == "anyres":
        if merge not in ("spatial_unpad", "flat"):
            raise ConfigError(
                f"mm_patch_merge_type {merge!r} is not supported with anyres (only 'spatial_unpad' and 'flat')"
            )
        if hf.get("image_grid_pinpoints") is None:
            raise ConfigError("image_aspect_ratio 'anyres' but the config has no image_grid_pinpoints")
        pins = _pinpoints(hf["image_grid_pinpoints"], where="image_grid_pinpoints", width_first=True)
        anyres = {"grid_pinpoints": pins, "patch_merge_type": merge}
    elif merge != "flat":
        raise ConfigError(
            f"mm_patch_merge_type {merge!r} is not supported with image_aspect_ratio {aspect!r} (only 'flat'; "
            f"'spatial_unpad' needs 'anyres')"
        )
    vision = _original_vision(hf, vision_hf)
    if int(hf.get("mm_hidden_size", vision.hidden_size)) != vision.hidden_size:
        tower = hf.get("mm_vision_tower")
        where = "the given vision tower" if vision_hf else f"the default tower for mm_vision_tower {tower!r}"
        raise ConfigError(
            f"mm_hidden_size {hf['mm_hidden_size']} != vision hidden size {vision.hidden_size} of {where}: "
            f"pass vision_tower= the HF CLIP directory this checkpoint was trained with (CLI --vision-tower)"
        )
    return compose_llava(
        vision,
        llama_config_from_hf(hf),
        feature_layer=int(hf.get("mm_vision_select_layer", -2)),
        strategy=strategy,
        # The original repo splices at a sentinel (-200); llava_jax uses the first id past the vocabulary.
        image_token_index=int(hf.get("vocab_size", 32000)),
        projector_act="gelu",
        projector_bias=True,
        aspect=aspect,
        **anyres,
    )


def llava_config_from_hf(hf: Mapping, *, vision_hf: Mapping | None = None) -> LlavaConfig:
    """`LlavaConfig` from an HF `LlavaConfig` / `LlavaNextConfig` dict, or an original LLaVA repo `config.json` dict.

    The two are told apart by `config_kind`. For original-repo configs the vision
    tower config is not inside the file: pass `vision_hf` (the CLIP `config.json`
    dict), else the tower `mm_vision_tower` names must be a known one (CLIP ViT-L/14-336).
    """
    kind = config_kind(hf)
    return _from_hf_llava(hf) if kind == "hf" else original_llava_config(hf, vision_hf)


def llava_config_to_hf(config: LlavaConfig) -> dict:
    """HF transformers `LlavaConfig` dict (what `config.json` of a llava-hf directory holds); for anyres
    models a `LlavaNextConfig` dict (`spatial_unpad` only: transformers has no class for the `flat` merge)."""
    v, t = config.vision, config.llm
    if config.anyres and config.patch_merge_type != "spatial_unpad":
        raise ConfigError(
            f"patch_merge_type {config.patch_merge_type!r}: transformers' LlavaNext only merges tiles by "
            f"'spatial_unpad'; keep this model as a llava_jax checkpoint (Llava.save)"
        )
    rope = {"rope_type": t.rope_scaling.rope_type, "rope_theta": t.rope_theta}
    if t.rope_scaling.rope_type != "default":
        rope["factor"] = t.rope_scaling.factor
        for key in ("original_max_position_embeddings", "low_freq_factor", "high_freq_factor"):
            if getattr(t.rope_scaling, key) is not None:
                rope[key] = getattr(t.rope_scaling, key)
    layer = config.vision_feature_layer
    head = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava"}
    if config.anyres:
        head = {
            "architectures": ["LlavaNextForConditionalGeneration"],
            "model_type": "llava_next",
            "image_grid_pinpoints": [list(p) for p in config.image_grid_pinpoints],
        }
    return {
        **head,
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
