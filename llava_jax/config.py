"""Frozen component configs for LLaVA-1.5 and their presets.

Each module receives its own config (`VisionConfig`, `ProjectorConfig`,
`LlamaConfig`); `LlavaConfig` joins them. `LlavaConfig.from_hf` reads an HF
transformers `LlavaConfig` JSON dict or the original LLaVA repo's flat
`config.json` (LLaMA fields plus `mm_*` fields); `to_hf` writes the HF form.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
SUPPORTED_ATTENTION_IMPLS = ("xla", "cudnn", "pallas_gpu", "splash", "auto")
SUPPORTED_REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
_VISION_ACTS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")
_PROJECTOR_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "quick_gelu", "silu", "relu")


class ConfigError(ValueError):
    """A configuration that llava_jax cannot represent exactly."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling as in HF `rope_parameters` (`rope_type` in SUPPORTED_ROPE_TYPES)."""

    rope_type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None

    def __post_init__(self):
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(f"rope_type {self.rope_type!r} is not supported (supported: {SUPPORTED_ROPE_TYPES})")
        if self.rope_type == "llama3" and None in (
            self.low_freq_factor,
            self.high_freq_factor,
            self.original_max_position_embeddings,
        ):
            raise ConfigError(
                "llama3 rope scaling needs low_freq_factor, high_freq_factor and original_max_position_embeddings"
            )


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT vision tower (HF `CLIPVisionConfig` fields)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"vision hidden_size {self.hidden_size} not divisible by heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} not divisible by patch_size {self.patch_size}")
        if self.hidden_act not in _VISION_ACTS:
            raise ConfigError(f"vision hidden_act {self.hidden_act!r} not in {_VISION_ACTS}")
        if self.attention_impl not in SUPPORTED_ATTENTION_IMPLS:
            raise ConfigError(f"attention_impl {self.attention_impl!r} not in {SUPPORTED_ATTENTION_IMPLS}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """`mlp2x_gelu` projector: Linear(in -> out) -> act -> Linear(out -> out)."""

    in_features: int = 1024
    out_features: int = 4096
    hidden_act: str = "gelu"
    use_bias: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.hidden_act not in _PROJECTOR_ACTS:
            raise ConfigError(f"projector hidden_act {self.hidden_act!r} not in {_PROJECTOR_ACTS}")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """LLaMA/Vicuna decoder (HF `LlamaConfig` fields)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    remat_policy: str = "none"
    lora_rank: int = 0  # > 0 adds LoRA adapters to every attention and MLP projection
    lora_alpha: float = 0.0
    lora_dropout: float = 0.0

    def __post_init__(self):
        if self.lora_rank < 0 or (self.lora_rank and self.lora_alpha <= 0):
            raise ConfigError(f"LoRA needs rank >= 0 and alpha > 0, got {self.lora_rank}, {self.lora_alpha}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads {self.num_heads} not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.attention_impl not in SUPPORTED_ATTENTION_IMPLS:
            raise ConfigError(f"attention_impl {self.attention_impl!r} not in {SUPPORTED_ATTENTION_IMPLS}")
        if self.remat_policy not in SUPPORTED_REMAT_POLICIES:
            raise ConfigError(f"remat_policy {self.remat_policy!r} not in {SUPPORTED_REMAT_POLICIES}")


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    """The composite model: vision tower, projector, language model and the merge rule."""

    vision: VisionConfig = VisionConfig()
    projector: ProjectorConfig = ProjectorConfig()
    llm: LlamaConfig = LlamaConfig()
    image_token_index: int = 32000
    image_seq_length: int = 576
    vision_feature_layer: int | tuple[int, ...] = -2
    vision_feature_select_strategy: str = "default"
    image_aspect_ratio: str = "pad"

    def __post_init__(self):
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ConfigError(
                f"vision_feature_select_strategy {self.vision_feature_select_strategy!r} not in ('default', 'full')"
            )
        if isinstance(self.vision_feature_layer, list):
            object.__setattr__(self, "vision_feature_layer", tuple(self.vision_feature_layer))
        for layer in self.feature_layers:
            if not -(self.vision.num_layers + 1) <= layer <= self.vision.num_layers:
                raise ConfigError(
                    f"vision_feature_layer {layer} out of range for {self.vision.num_layers} vision layers"
                )
        expected_in = self.vision.hidden_size * len(self.feature_layers)
        if self.projector.in_features != expected_in:
            raise ConfigError(f"projector in_features {self.projector.in_features} != {expected_in}")
        if self.projector.out_features != self.llm.hidden_size:
            raise ConfigError(
                f"projector out_features {self.projector.out_features} != llm hidden {self.llm.hidden_size}"
            )
        tokens = self.vision.num_patches + (1 if self.vision_feature_select_strategy == "full" else 0)
        if self.image_seq_length != tokens:
            raise ConfigError(
                f"image_seq_length {self.image_seq_length} but the vision tower yields {tokens} tokens per image"
            )

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """Selected hidden-state indices (HF convention: 0 = embeddings, -1 = last layer)."""
        layer = self.vision_feature_layer
        return (layer,) if isinstance(layer, int) else tuple(layer)

    @property
    def vision_layers_used(self) -> int:
        """How many encoder layers must run to produce the selected hidden states."""
        n = self.vision.num_layers
        return max(layer % (n + 1) for layer in self.feature_layers)

    def with_dtype(self, dtype: str, param_dtype: str | None = None) -> LlavaConfig:
        """Same config with compute `dtype` (and `param_dtype`, default the same) in every component."""
        param_dtype = param_dtype or dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        return dataclasses.replace(
            self,
            vision=dataclasses.replace(self.vision, **kw),
            projector=dataclasses.replace(self.projector, **kw),
            llm=dataclasses.replace(self.llm, **kw),
        )

    def with_attention(self, impl: str) -> LlavaConfig:
        """Same config with attention implementation `impl` in vision and LLM."""
        return dataclasses.replace(
            self,
            vision=dataclasses.replace(self.vision, attention_impl=impl),
            llm=dataclasses.replace(self.llm, attention_impl=impl),
        )

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """Plain JSON-able dict of every field (the llava_jax checkpoint's `config.json`)."""
        return {"format": "llava_jax", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping) -> LlavaConfig:
        """Inverse of `to_dict`."""
        d = dict(d)
        d.pop("format", None)
        llm = dict(d.pop("llm"))
        llm["rope_scaling"] = RopeScaling(**llm.get("rope_scaling", {}))
        layer = d.get("vision_feature_layer", -2)
        if isinstance(layer, list):
            d["vision_feature_layer"] = tuple(layer)
        return cls(
            vision=VisionConfig(**d.pop("vision")),
            projector=ProjectorConfig(**d.pop("projector")),
            llm=LlamaConfig(**llm),
            **d,
        )

    @classmethod
    def from_hf(cls, hf: Mapping, *, vision_hf: Mapping | None = None) -> LlavaConfig:
        """Read an HF `LlavaConfig` dict, or an original LLaVA repo `config.json` dict.

        For original-repo configs the vision tower config is not inside the file:
        pass `vision_hf` (the CLIP `config.json` dict) or get CLIP ViT-L/14-336.
        """
        kind = config_kind(hf)
        return _from_hf_llava(hf) if kind == "hf" else _from_original(hf, vision_hf)

    def to_hf(self) -> dict:
        """HF transformers `LlavaConfig` dict (what `config.json` of a llava-hf directory holds)."""
        v, t = self.vision, self.llm
        rope = {"rope_type": t.rope_scaling.rope_type, "rope_theta": t.rope_theta}
        if t.rope_scaling.rope_type != "default":
            rope["factor"] = t.rope_scaling.factor
            for key in ("original_max_position_embeddings", "low_freq_factor", "high_freq_factor"):
                if getattr(t.rope_scaling, key) is not None:
                    rope[key] = getattr(t.rope_scaling, key)
        layer = self.vision_feature_layer
        return {
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "image_token_index": self.image_token_index,
            "image_seq_length": self.image_seq_length,
            "projector_hidden_act": self.projector.hidden_act,
            "multimodal_projector_bias": self.projector.use_bias,
            "vision_feature_layer": list(layer) if isinstance(layer, tuple) else layer,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
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

    def save(self, directory: str) -> None:
        """Write `config.json` (llava_jax form) into `directory`."""
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(self.to_dict(), f, indent=2)


# -------------------------------------------------------------------- HF parsing
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


def compose_llava(
    vision: VisionConfig,
    llm: LlamaConfig,
    *,
    image_token_index: int | None = None,
    feature_layer: int | tuple[int, ...] | list[int] = -2,
    strategy: str = "default",
    projector_act: str = "gelu",
    projector_bias: bool = True,
    aspect: str = "pad",
) -> LlavaConfig:
    """A `LlavaConfig` joining `vision` and `llm` with LLaVA-1.5's settings unless told otherwise.

    The projector is sized from the two towers; `image_token_index` defaults to the first
    id past the LLM's vocabulary (the original repo's convention).
    """
    if image_token_index is None:
        image_token_index = llm.vocab_size
    feature_layer = tuple(feature_layer) if isinstance(feature_layer, list) else int(feature_layer)
    n_layers = 1 if isinstance(feature_layer, int) else len(feature_layer)
    seq = vision.num_patches + (1 if strategy == "full" else 0)
    return LlavaConfig(
        vision=vision,
        projector=ProjectorConfig(
            in_features=vision.hidden_size * n_layers,
            out_features=llm.hidden_size,
            hidden_act=projector_act,
            use_bias=projector_bias,
        ),
        llm=llm,
        image_token_index=image_token_index,
        image_seq_length=seq,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
        image_aspect_ratio=aspect,
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


# ------------------------------------------------------------------------ presets
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


PRESETS = {
    "llava_v15_7b": llava_v15_7b,
    "llava_v15_13b": llava_v15_13b,
    "bench_small": bench_small,
    "tiny": tiny,
}


_compose = compose_llava  # older private name, kept for callers outside the package
