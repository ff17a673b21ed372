"""The correspondence between checkpoint tensor names and llava_jax parameter paths.

Every accepted layout is first rewritten to one canonical naming
(`vision.*` = CLIP vision model keys, `projector.linear_{1,2}.*`,
`projector.image_newline` (LLaVA-NeXT), `llm.*` = LLaMA model keys,
`lm_head.weight`); `tensor_specs(config)` then lists, for each parameter, its
canonical key(s) and the transpose/reshape between them.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from llava_jax.config import LlavaConfig

# Layout prefixes, most specific first (original repo, HF on disk old/new, HF in memory, CLIP, LLaMA).
PREFIX_RULES = (
    # LLaVA-NeXT's newline: `image_newline` on disk, `model.image_newline` in memory and in the original repo.
    (r"^(model\.)?image_newline$", "projector.image_newline"),
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", "vision."),
    (r"^model\.vision_tower\.vision_model\.", "vision."),
    (r"^vision_tower\.vision_model\.", "vision."),
    (r"^model\.vision_tower\.", "vision."),
    (r"^vision_tower\.", "vision."),
    (r"^vision_model\.", "vision."),
    (r"^(?=(embeddings|encoder|pre_layrnorm|post_layernorm)\.)", "vision."),  # CLIPVisionModel, transformers 5
    (r"^model\.multi_modal_projector\.", "projector."),
    (r"^multi_modal_projector\.", "projector."),
    (r"^model\.mm_projector\.0\.", "projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "projector.linear_2."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^language_model\.model\.", "llm."),
    (r"^model\.language_model\.", "llm."),
    (r"^lm_head\.", "lm_head."),
    (r"^model\.", "llm."),
)
# Buffers and parts of whole-CLIP checkpoints that LLaVA does not use.
IGNORED = (
    r"^vision\.embeddings\.position_ids$",
    r"^llm\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$",
    r"^text_model\.",
    r"^visual_projection\.",
    r"^text_projection\.",
    r"^logit_scale$",
)

# What transformers 5 writes in `save_pretrained` for LlavaForConditionalGeneration.
HF_SAVE_PREFIXES = {
    "projector.image_newline": "image_newline",
    "vision.": "vision_tower.",
    "projector.": "multi_modal_projector.",
    "llm.": "language_model.model.",
    "lm_head.": "language_model.lm_head.",
}


def canonical_key(key: str) -> str | None:
    """Canonical name of a checkpoint key, or None when the key is ignored.

    Raises `KeyError` for a key of no known layout.
    """
    for pattern, repl in PREFIX_RULES:
        if re.match(pattern, key):
            key = re.sub(pattern, repl, key, count=1)
            break
    else:
        if not any(re.match(p, key) for p in IGNORED):
            raise KeyError(key)
    if any(re.match(p, key) for p in IGNORED):
        return None
    return key


def hf_save_key(canonical: str) -> str:
    """The key transformers 5 writes on disk for a canonical name."""
    for prefix, repl in HF_SAVE_PREFIXES.items():
        if canonical.startswith(prefix):
            return repl + canonical[len(prefix) :]
    raise KeyError(canonical)


# ------------------------------------------------------------------ transforms
# Each kind maps a PyTorch tensor to the Flax parameter and back, given the Flax shape.
def _to_jax(kind: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "copy":
        return a
    if kind == "linear":
        return a.T
    if kind in ("heads_in", "heads_out"):  # [N*H, D] -> [D, N, H];  [D, N*H] -> [N, H, D]
        return a.T.reshape(shape)
    if kind == "heads_bias":
        return a.reshape(shape)
    if kind == "conv":  # OIHW -> HWIO
        return a.transpose(2, 3, 1, 0)
    raise ValueError(kind)


def _to_torch(kind: str, a: np.ndarray) -> np.ndarray:
    if kind == "copy":
        return a
    if kind == "linear":
        return a.T
    if kind == "heads_in":
        return a.reshape(a.shape[0], -1).T
    if kind == "heads_out":
        return a.reshape(-1, a.shape[-1]).T
    if kind == "heads_bias":
        return a.reshape(-1)
    if kind == "conv":
        return a.transpose(3, 2, 0, 1)
    raise ValueError(kind)


def torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the PyTorch tensor that becomes a Flax parameter of `shape` under `kind`."""
    if kind == "copy":
        return shape
    if kind == "linear":
        return (shape[1], shape[0])
    if kind == "heads_in":
        return (shape[1] * shape[2], shape[0])
    if kind == "heads_out":
        return (shape[2], shape[0] * shape[1])
    if kind == "heads_bias":
        return (int(np.prod(shape)),)
    if kind == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    raise ValueError(kind)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One parameter: its path, canonical key template (`{i}` = layer) and transform kind."""

    path: tuple[str, ...]
    key: str
    kind: str
    layers: int | None = None  # stacked over this many layers

    def keys(self) -> list[str]:
        if self.layers is None:
            return [self.key]
        return [self.key.format(i=i) for i in range(self.layers)]

    def to_jax(self, a: np.ndarray, layer_shape: tuple[int, ...]) -> np.ndarray:
        """PyTorch tensor -> Flax parameter (one layer's slice when stacked)."""
        return _to_jax(self.kind, a, layer_shape)

    def to_torch(self, a: np.ndarray) -> np.ndarray:
        """Flax parameter (one layer's slice when stacked) -> PyTorch tensor."""
        return _to_torch(self.kind, a)


def _vision_specs(config: LlavaConfig) -> list[TensorSpec]:
    n = config.vision.num_layers
    layer = "vision.encoder.layers.{i}."
    specs = [
        TensorSpec(("vision", "class_embedding"), "vision.embeddings.class_embedding", "copy"),
        TensorSpec(("vision", "patch_embedding"), "vision.embeddings.patch_embedding.weight", "conv"),
        TensorSpec(("vision", "position_embedding"), "vision.embeddings.position_embedding.weight", "copy"),
    ]
    for ln in ("pre_layrnorm", "post_layernorm"):
        specs += [
            TensorSpec(("vision", ln, "scale"), f"vision.{ln}.weight", "copy"),
            TensorSpec(("vision", ln, "bias"), f"vision.{ln}.bias", "copy"),
        ]
    for ln in ("layer_norm1", "layer_norm2"):
        specs += [
            TensorSpec(("vision", "layers", ln, "scale"), layer + ln + ".weight", "copy", n),
            TensorSpec(("vision", "layers", ln, "bias"), layer + ln + ".bias", "copy", n),
        ]
    for proj in ("q_proj", "k_proj", "v_proj"):
        base = ("vision", "layers", "self_attn", proj)
        specs += [
            TensorSpec(base + ("kernel",), layer + f"self_attn.{proj}.weight", "heads_in", n),
            TensorSpec(base + ("bias",), layer + f"self_attn.{proj}.bias", "heads_bias", n),
        ]
    base = ("vision", "layers", "self_attn", "out_proj")
    specs += [
        TensorSpec(base + ("kernel",), layer + "self_attn.out_proj.weight", "heads_out", n),
        TensorSpec(base + ("bias",), layer + "self_attn.out_proj.bias", "copy", n),
    ]
    for fc in ("fc1", "fc2"):
        base = ("vision", "layers", "mlp", fc)
        specs += [
            TensorSpec(base + ("kernel",), layer + f"mlp.{fc}.weight", "linear", n),
            TensorSpec(base + ("bias",), layer + f"mlp.{fc}.bias", "copy", n),
        ]
    return specs


def _projector_specs(config: LlavaConfig) -> list[TensorSpec]:
    specs = []
    for lin in ("linear_1", "linear_2"):
        specs.append(TensorSpec(("projector", lin, "kernel"), f"projector.{lin}.weight", "linear"))
        if config.projector.use_bias:
            specs.append(TensorSpec(("projector", lin, "bias"), f"projector.{lin}.bias", "copy"))
    if config.uses_image_newline:
        specs.append(TensorSpec(("projector", "image_newline"), "projector.image_newline", "copy"))
    return specs


def _llm_specs(config: LlavaConfig) -> list[TensorSpec]:
    c = config.llm
    n = c.num_layers
    layer = "llm.layers.{i}."
    specs = [
        TensorSpec(("llm", "embed_tokens"), "llm.embed_tokens.weight", "copy"),
        TensorSpec(("llm", "norm", "scale"), "llm.norm.weight", "copy"),
    ]
    if not c.tie_word_embeddings:
        specs.append(TensorSpec(("llm", "lm_head", "kernel"), "lm_head.weight", "linear"))
    for ln in ("input_layernorm", "post_attention_layernorm"):
        specs.append(TensorSpec(("llm", "layers", ln, "scale"), layer + ln + ".weight", "copy", n))
    for proj in ("q_proj", "k_proj", "v_proj"):
        base = ("llm", "layers", "self_attn", proj)
        specs.append(TensorSpec(base + ("kernel",), layer + f"self_attn.{proj}.weight", "heads_in", n))
        if c.attention_bias:
            specs.append(TensorSpec(base + ("bias",), layer + f"self_attn.{proj}.bias", "heads_bias", n))
    base = ("llm", "layers", "self_attn", "o_proj")
    specs.append(TensorSpec(base + ("kernel",), layer + "self_attn.o_proj.weight", "heads_out", n))
    if c.attention_bias:
        specs.append(TensorSpec(base + ("bias",), layer + "self_attn.o_proj.bias", "copy", n))
    for proj in ("gate_proj", "up_proj", "down_proj"):
        base = ("llm", "layers", "mlp", proj)
        specs.append(TensorSpec(base + ("kernel",), layer + f"mlp.{proj}.weight", "linear", n))
        if c.mlp_bias:
            specs.append(TensorSpec(base + ("bias",), layer + f"mlp.{proj}.bias", "copy", n))
    return specs


def tensor_specs(config: LlavaConfig, parts=("vision", "projector", "llm")) -> list[TensorSpec]:
    """Every parameter of `config`'s model (restricted to `parts`) with its checkpoint mapping."""
    builders = {"vision": _vision_specs, "projector": _projector_specs, "llm": _llm_specs}
    return [spec for part in parts for spec in builders[part](config)]
