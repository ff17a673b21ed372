"""Frozen component configs for LLaVA-1.5.

Each module receives its own config (`VisionConfig`, `ProjectorConfig`,
`LlamaConfig`); `LlavaConfig` joins them and `compose_llava` builds one from
two towers with LLaVA-1.5's settings. Named presets live in `llava_jax.presets`;
reading and writing HF / original LLaVA `config.json` files in
`llava_jax.convert.hf_config`.

High-resolution input (LLaVA-1.5-HD, LLaVA-NeXT's `anyres`) is an image mode of
`LlavaConfig` (`image_aspect_ratio="anyres"` with `image_grid_pinpoints` and a
`patch_merge_type`); its geometry (which grid an image gets, how many tokens it
becomes) is `AnyresConfig`, shared by preprocessing, the data pipeline and the model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

from llava_jax.kernels.attention import IMPLS as SUPPORTED_ATTENTION_IMPLS

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
SUPPORTED_REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "qkv_proj", "minimal")
_VISION_ACTS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")
_PROJECTOR_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "quick_gelu", "silu", "relu")
IMAGE_ASPECT_RATIOS = ("pad", "square", "anyres")
PATCH_MERGE_TYPES = ("flat", "spatial_unpad")


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


def select_best_resolution(height: int, width: int, pinpoints) -> tuple[int, int]:
    """The (height, width) of `pinpoints` an image of `height` x `width` fits best (LLaVA-NeXT's rule).

    Most of the image's pixels kept after scaling it to fit inside the candidate
    (capped at its own pixel count), ties broken by the least wasted area; the
    first candidate wins remaining ties. Python float arithmetic, as transformers'
    `select_best_resolution`, so the choice is the same for every size.
    """
    best, best_effective, best_wasted = None, 0, float("inf")
    for pin_h, pin_w in pinpoints:
        scale = min(pin_w / width, pin_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = pin_w * pin_h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (int(pin_h), int(pin_w)), effective, wasted
    if best is None:
        raise ValueError(f"no grid pinpoint fits a {height}x{width} image (pinpoints {list(pinpoints)})")
    return best


@dataclasses.dataclass(frozen=True)
class AnyresConfig:
    """LLaVA-NeXT `anyres` geometry: which tile grid an image gets and how many LLM tokens it becomes.

    An image of `height` x `width` pixels is scaled (aspect kept) into the best
    pinpoint, padded to it and cut into `tile_size` tiles: `rows x cols` tiles
    plus one global view of the whole image. Each tile gives `side x side` patch
    features (`side = tile_size // patch_size`), `tokens_per_tile` tokens (+1 with CLS).

    Merges (`merge_type`):
    - `spatial_unpad`: the base view's tokens, then the tiles' features laid out
      as one `rows*side x cols*side` map, the rows/columns that only cover the
      padding removed (HF `unpad_image`), with a newline token after each row:
      `tokens_per_tile + kept_rows * (kept_cols + 1)` tokens.
    - `flat`: every tile's tokens one after another, base view first:
      `(1 + rows * cols) * tokens_per_tile`.
    """

    grid_pinpoints: tuple[tuple[int, int], ...]
    tile_size: int = 336
    patch_size: int = 14
    merge_type: str = "spatial_unpad"
    tokens_per_tile: int = 576

    def __post_init__(self):
        object.__setattr__(self, "grid_pinpoints", tuple(tuple(int(x) for x in p) for p in self.grid_pinpoints))
        if self.merge_type not in PATCH_MERGE_TYPES:
            raise ConfigError(f"merge_type {self.merge_type!r} not in {PATCH_MERGE_TYPES}")

    @property
    def side(self) -> int:
        """Patch features per tile side (24 for CLIP-L/14 at 336)."""
        return self.tile_size // self.patch_size

    def best_resolution(self, height: int, width: int) -> tuple[int, int]:
        """The pinpoint (height, width) the image is scaled into."""
        return select_best_resolution(height, width, self.grid_pinpoints)

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of tiles for an image of `height` x `width` pixels."""
        pin_h, pin_w = self.best_resolution(height, width)
        return pin_h // self.tile_size, pin_w // self.tile_size

    def num_tiles(self, height: int, width: int) -> int:
        """Tiles the vision tower encodes for the image: its grid plus the global view."""
        rows, cols = self.grid_shape(height, width)
        return 1 + rows * cols

    def kept_region(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1): the part of the merged `rows*side x cols*side` feature map that
        covers the image rather than its padding (HF `unpad_image`'s arithmetic exactly)."""
        rows, cols = self.grid_shape(height, width)
        cur_h, cur_w = rows * self.side, cols * self.side
        if width / height > cur_w / cur_h:
            new_h = int(round(height * (cur_w / width), 7))
            pad = (cur_h - new_h) // 2
            return pad, cur_h - pad, 0, cur_w
        new_w = int(round(width * (cur_h / height), 7))
        pad = (cur_w - new_w) // 2
        return 0, cur_h, pad, cur_w - pad

    def image_grid(self, height: int, width: int) -> tuple[int, int, int, int, int, int]:
        """What the model needs to merge the image's tiles: (rows, cols, row0, row1, col0, col1)."""
        return self.grid_shape(height, width) + self.kept_region(height, width)

    def num_tokens(self, height: int, width: int) -> int:
        """LLM tokens (placeholders) the image becomes; equals transformers' `LlavaNextProcessor` count."""
        if self.merge_type == "flat":
            return self.num_tiles(height, width) * self.tokens_per_tile
        r0, r1, c0, c1 = self.kept_region(height, width)
        return self.tokens_per_tile + (r1 - r0) * (c1 - c0 + 1)

    @property
    def max_tiles(self) -> int:
        """Tile slots per image in static shapes: the largest grid plus the global view."""
        return 1 + max((h // self.tile_size) * (w // self.tile_size) for h, w in self.grid_pinpoints)

    @property
    def max_tokens(self) -> int:
        """The most tokens any image can become (an image of a pinpoint's aspect keeps its whole grid)."""
        if self.merge_type == "flat":
            return self.max_tiles * self.tokens_per_tile
        s = self.side
        return self.tokens_per_tile + max(
            (h // self.tile_size * s) * (w // self.tile_size * s + 1) for h, w in self.grid_pinpoints
        )


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
    # anyres only: candidate resolutions (height, width), multiples of the tower's image size.
    image_grid_pinpoints: tuple[tuple[int, int], ...] = ()
    # How an anyres image's tiles become tokens: 'spatial_unpad' (LLaVA-NeXT: base view, then the
    # tile grid merged, unpadded, with a learned newline after each row) or 'flat' (tiles one after another).
    patch_merge_type: str = "flat"

    def __post_init__(self):
        object.__setattr__(
            self, "image_grid_pinpoints", tuple(tuple(int(x) for x in p) for p in self.image_grid_pinpoints)
        )
        self._check_image_mode()
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

    def _check_image_mode(self):
        if self.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ConfigError(f"image_aspect_ratio {self.image_aspect_ratio!r} not in {IMAGE_ASPECT_RATIOS}")
        if self.patch_merge_type not in PATCH_MERGE_TYPES:
            raise ConfigError(f"patch_merge_type {self.patch_merge_type!r} not in {PATCH_MERGE_TYPES}")
        if self.image_aspect_ratio != "anyres":
            if self.patch_merge_type != "flat":
                raise ConfigError(
                    f"patch_merge_type {self.patch_merge_type!r} needs image_aspect_ratio 'anyres' "
                    f"(got {self.image_aspect_ratio!r})"
                )
            return
        if not self.image_grid_pinpoints:
            raise ConfigError("image_aspect_ratio 'anyres' needs image_grid_pinpoints")
        side = self.vision.image_size
        for pin in self.image_grid_pinpoints:
            if len(pin) != 2 or min(pin) < side or pin[0] % side or pin[1] % side:
                raise ConfigError(
                    f"image_grid_pinpoints entry {list(pin)} is not a (height, width) pair of multiples of "
                    f"the vision tower's image size {side}"
                )
        if self.patch_merge_type == "spatial_unpad" and self.vision_feature_select_strategy != "default":
            raise ConfigError(
                "patch_merge_type 'spatial_unpad' lays each tile's patch tokens on a grid: it needs "
                "vision_feature_select_strategy 'default' (CLS dropped)"
            )

    @property
    def anyres(self) -> AnyresConfig | None:
        """The anyres geometry (None unless `image_aspect_ratio == 'anyres'`)."""
        if self.image_aspect_ratio != "anyres":
            return None
        return AnyresConfig(
            grid_pinpoints=self.image_grid_pinpoints,
            tile_size=self.vision.image_size,
            patch_size=self.vision.patch_size,
            merge_type=self.patch_merge_type,
            tokens_per_tile=self.image_seq_length,
        )

    @property
    def uses_image_newline(self) -> bool:
        """Whether the model has the learned `image_newline` embedding (spatial_unpad)."""
        return self.image_aspect_ratio == "anyres" and self.patch_merge_type == "spatial_unpad"

    @property
    def max_image_tokens(self) -> int:
        """The most LLM tokens one image can become (`image_seq_length` outside anyres)."""
        return self.anyres.max_tokens if self.anyres else self.image_seq_length

    def image_tokens(self, height: int, width: int) -> int:
        """LLM tokens of an image of `height` x `width` pixels (before preprocessing)."""
        return self.anyres.num_tokens(height, width) if self.anyres else self.image_seq_length

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
        d["image_grid_pinpoints"] = tuple(tuple(p) for p in d.get("image_grid_pinpoints", ()))
        return cls(
            vision=VisionConfig(**d.pop("vision")),
            projector=ProjectorConfig(**d.pop("projector")),
            llm=LlamaConfig(**llm),
            **d,
        )

    def save(self, directory: str) -> None:
        """Write `config.json` (llava_jax form) into `directory`."""
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(self.to_dict(), f, indent=2)


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
    grid_pinpoints=(),
    patch_merge_type: str = "flat",
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
        image_grid_pinpoints=tuple(tuple(p) for p in grid_pinpoints),
        patch_merge_type=patch_merge_type,
    )
