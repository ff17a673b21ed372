"""The public entry points: `load`, `load_components`, and the loaded-model object `Llava`."""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llava_jax.config import ConfigError, LlavaConfig, config_kind, llama_config_from_hf, vision_config_from_hf
from llava_jax.convert.hf import canonical_sources, iter_params, nest, read_params
from llava_jax.convert.native import is_native, load_native, save_native
from llava_jax.convert.tensors import CheckpointError, weight_files
from llava_jax.model.llava import LlavaModel
from llava_jax.model.params import init_params
from llava_jax.sharding import DEFAULT_RULES, Rules

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{os.path.dirname(path) or '.'}: no config.json (not a model directory)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def load_tokenizer(directory: str):
    """The HF tokenizer saved in `directory` (AutoTokenizer, never remote code), or None."""
    if not any(os.path.exists(os.path.join(directory, f)) for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, trust_remote_code=False)


def _context(mesh, rules):
    """Mesh and logical-rule context under which model code resolves activation constraints."""
    import contextlib

    stack = contextlib.ExitStack()
    if mesh is not None:
        stack.enter_context(jax.set_mesh(mesh))
        stack.enter_context(nn.logical_axis_rules(rules))
    return stack


@functools.partial(jax.jit, static_argnames=("config",))
def _forward_logits(params, input_ids, images, padding_mask, *, config):
    logits, _ = LlavaModel(config).apply({"params": params}, input_ids, images, padding_mask=padding_mask)
    return logits


def images_per_row(input_ids: np.ndarray, pixel_values, config: LlavaConfig):
    """Split HF-style flat images over batch rows by counting each row's placeholders.

    Args:
      input_ids: int[B, T] with `image_seq_length` placeholders per image.
      pixel_values: float[N, 3, S, S] (channels first, HF processor output) or None.
    Returns:
      float32[B, M, S, S, 3] images in row order (zero-filled slots), or None without images.
    Raises:
      ValueError when placeholders and images disagree (never a silent misalignment).
    """
    counts = (input_ids == config.image_token_index).sum(axis=1)
    n_images = 0 if pixel_values is None else int(np.shape(pixel_values)[0])
    per = config.image_seq_length
    bad = [int(b) for b in np.nonzero(counts % per)[0]]
    if bad:
        raise ValueError(
            f"row {bad[0]} has {int(counts[bad[0]])} image placeholders, not a multiple of image_seq_length={per}"
        )
    rows = counts // per
    if int(rows.sum()) != n_images:
        raise ValueError(
            f"input_ids hold placeholders for {int(rows.sum())} image(s) "
            f"({int(counts.sum())} tokens of id {config.image_token_index}) but {n_images} "
            f"image(s) were given"
        )
    if n_images == 0:
        return None
    pixels = np.asarray(pixel_values, np.float32)
    if pixels.ndim != 4 or pixels.shape[1] != config.vision.num_channels:
        raise ValueError(f"pixel_values must be [N, {config.vision.num_channels}, H, W], got {pixels.shape}")
    pixels = pixels.transpose(0, 2, 3, 1)
    out = np.zeros((len(rows), int(rows.max())) + pixels.shape[1:], np.float32)
    k = 0
    for b, n in enumerate(rows):
        out[b, :n] = pixels[k : k + n]
        k += n
    return out


@dataclasses.dataclass
class Llava:
    """A loaded LLaVA model: config, parameters (plain pytree), tokenizer and placement."""

    config: LlavaConfig
    params: dict
    tokenizer: object = None
    mesh: object = None
    rules: Rules = DEFAULT_RULES

    @property
    def module(self) -> LlavaModel:
        return LlavaModel(self.config)

    def logits(self, input_ids, pixel_values=None, attention_mask=None) -> np.ndarray:
        """Full-sequence logits for HF-processor inputs.

        Args:
          input_ids: int[B, T] with `image_seq_length` placeholders per image.
          pixel_values: float[N, 3, S, S] channels-first (as `LlavaProcessor` returns), or None.
          attention_mask: int/bool[B, T], 1 for real tokens (default all ones).
        Returns:
          float32[B, T, V], comparable one to one with `LlavaForConditionalGeneration(...).logits`.
        """
        ids = np.asarray(input_ids, np.int32)
        images = images_per_row(ids, pixel_values, self.config)
        mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
        with _context(self.mesh, self.rules):
            out = _forward_logits(self.params, ids, images, mask, config=self.config)
        return np.asarray(jax.device_get(out), np.float32)

    def generate(self, input_ids, pixel_values=None, attention_mask=None, **kwargs) -> np.ndarray:
        """New tokens int32[B, N] for HF-processor inputs; see `llava_jax.infer.generate.generate`."""
        from llava_jax.infer.generate import generate

        return generate(self, input_ids, pixel_values, attention_mask, **kwargs)

    def chat(self, images, prompts, **kwargs) -> list[str]:
        """Answers to `prompts` about PIL `images`; see `llava_jax.infer.chat.chat`."""
        from llava_jax.infer.chat import chat

        return chat(self, images, prompts, **kwargs)

    def save(self, directory: str) -> None:
        """Write a llava_jax checkpoint directory (orbax params + config.json + tokenizer)."""
        save_native(directory, self.params, self.config, self.tokenizer)

    def export_hf(self, directory: str, *, dtype=None) -> None:
        """Write an HF transformers LLaVA directory; see `llava_jax.convert.export.export_hf`."""
        from llava_jax.convert.export import export_hf

        export_hf(self, directory, dtype=dtype)


def _vision_from_dir(directory: str, config: LlavaConfig, dtype, mesh, rules) -> dict:
    sources = canonical_sources(weight_files(directory), where=directory)
    return read_params(config, sources, dtype=dtype, parts=("vision",), mesh=mesh, rules=rules, where=directory)


def _resolve(path: str, dtype, vision_tower):
    """Config and a parameter stream for a non-native directory (see `load`)."""
    hf = _read_json(os.path.join(path, "config.json"))
    try:
        config_kind(hf)
    except ConfigError as e:
        raise CheckpointError(f"{path}/config.json: {e}") from e
    if vision_tower is None and os.path.isdir(str(hf.get("mm_vision_tower", ""))):
        vision_tower = hf["mm_vision_tower"]  # original configs may name a local CLIP directory
    sources = canonical_sources(weight_files(path), where=path)
    has_vision = any(k.startswith("vision.") for k in sources)
    if not has_vision and vision_tower is None:
        raise CheckpointError(
            f"{path}: checkpoint has no vision tower weights; pass vision_tower= (an HF CLIP directory, "
            f"here {hf.get('mm_vision_tower', 'openai/clip-vit-large-patch14-336')})"
        )
    vision_hf = None if vision_tower is None else _read_json(os.path.join(vision_tower, "config.json"))
    if dtype is None:
        dtype = str(hf.get("dtype") or hf.get("torch_dtype") or "float32")
    try:
        config = LlavaConfig.from_hf(hf, vision_hf=vision_hf).with_dtype(dtype)
    except ConfigError as e:
        raise CheckpointError(f"{path}/config.json: {e}") from e
    if has_vision:
        plan = [(sources, ("vision", "projector", "llm"), path)]
    else:
        tower = canonical_sources(weight_files(vision_tower), where=vision_tower)
        plan = [(tower, ("vision",), vision_tower), (sources, ("projector", "llm"), path)]
    return config, dtype, plan


def iter_checkpoint(
    path: str,
    *,
    dtype: str | None = "float32",
    mesh=None,
    rules: Rules = DEFAULT_RULES,
    vision_tower: str | None = None,
):
    """(config, iterator of (param path, jax.Array)) for an HF or original checkpoint, all validated first.

    Every source is validated before the first parameter is produced.
    """
    config, dtype, plan = _resolve(path, dtype, vision_tower)
    iterators = [
        iter_params(config, src, dtype=dtype, parts=parts, mesh=mesh, rules=rules, where=where)
        for src, parts, where in plan
    ]
    # Generators validate lazily: pull the first item of each now so errors come before any work.
    primed = [(next(it), it) for it in iterators]

    def stream():
        for first, it in primed:
            yield first
            yield from it

    return config, stream()


def load(
    path: str,
    *,
    dtype: str | None = "float32",
    mesh=None,
    rules: Rules = DEFAULT_RULES,
    vision_tower: str | None = None,
) -> Llava:
    """Load a LLaVA model from an HF LLaVA directory, an original LLaVA checkpoint or a llava_jax checkpoint.

    Args:
      path: the model directory.
      dtype: parameter and compute dtype ('float32', 'bfloat16'); None keeps the stored dtype.
      mesh: place parameters sharded on this mesh (by `rules`) straight from the files.
      vision_tower: HF CLIP directory for original checkpoints: its config always (the original
        `config.json` names the tower but does not describe it; default CLIP ViT-L/14-336 or the
        local directory `mm_vision_tower` names), its weights when the checkpoint has none.
    Returns:
      `Llava` with `.config`, `.params`, `.tokenizer` (None when the directory has none).
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such model directory")
    if is_native(path):
        config, params = load_native(path, dtype=dtype, mesh=mesh, rules=rules)
        return Llava(config, params, load_tokenizer(path), mesh, rules)
    config, stream = iter_checkpoint(path, dtype=dtype, mesh=mesh, rules=rules, vision_tower=vision_tower)
    params: dict = {}
    for param_path, value in stream:
        params.update(_merge(params, nest(param_path, value)))
    return Llava(config, params, load_tokenizer(path), mesh, rules)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if k in out and isinstance(v, dict) else v
    return out


def convert(src: str, dst: str, *, dtype: str | None = "float32", vision_tower: str | None = None) -> Llava:
    """Convert an HF / original checkpoint into a llava_jax checkpoint, one parameter in memory at a time.

    Returns a `Llava` whose `params` is None (nothing kept in memory); load `dst` to use it.
    """
    if not os.path.isdir(src):
        raise CheckpointError(f"{src}: no such model directory")
    config, stream = iter_checkpoint(src, dtype=dtype, vision_tower=vision_tower)
    tokenizer = load_tokenizer(src)
    save_native(dst, stream, config, tokenizer)
    return Llava(config, None, tokenizer)


def load_components(
    vision_dir: str,
    llm_dir: str,
    config: LlavaConfig | None = None,
    *,
    dtype: str = "float32",
    mesh=None,
    rules: Rules = DEFAULT_RULES,
    seed: int = 0,
) -> Llava:
    """Stage-1 initialisation: HF CLIP + HF LLaMA/Vicuna weights and a freshly initialised projector.

    Args:
      vision_dir: `CLIPVisionModel` or `CLIPModel` directory.
      llm_dir: `LlamaForCausalLM` directory (its tokenizer is loaded when present).
      config: the LLaVA config; by default built from the two `config.json` files with
        LLaVA-1.5 settings (feature layer -2, CLS dropped, image token = first id past the vocab).
      seed: projector initialisation seed.
    """
    vision_cfg = vision_config_from_hf(_read_json(os.path.join(vision_dir, "config.json")))
    llm_cfg = llama_config_from_hf(_read_json(os.path.join(llm_dir, "config.json")))
    if config is None:
        from llava_jax.config import compose_llava

        config = compose_llava(
            vision_cfg,
            llm_cfg,
            image_token_index=llm_cfg.vocab_size,
        )
    config = config.with_dtype(dtype)
    params = _vision_from_dir(vision_dir, config, dtype, mesh, rules)
    llm_sources = canonical_sources(weight_files(llm_dir), where=llm_dir)
    params.update(read_params(config, llm_sources, dtype=dtype, parts=("llm",), mesh=mesh, rules=rules, where=llm_dir))
    params["projector"] = init_projector(config, jax.random.PRNGKey(seed), mesh, rules)
    return Llava(config, params, load_tokenizer(llm_dir), mesh, rules)


def init_projector(config: LlavaConfig, rng, mesh=None, rules: Rules = DEFAULT_RULES) -> dict:
    """Freshly initialised projector parameters alone (the LLM and tower are never materialised twice)."""
    from llava_jax.model.params import param_shardings
    from llava_jax.model.projector import Projector

    module = Projector(config.projector)
    dummy = jnp.zeros((1, 1, config.projector.in_features), jnp.float32)
    init = lambda r: nn.meta.unbox(module.init(r, dummy)["params"])
    if mesh is None:
        return jax.jit(init)(rng)
    return jax.jit(init, out_shardings=param_shardings(config, mesh, rules)["projector"])(rng)


def random_model(config: LlavaConfig, seed: int = 0, mesh=None, rules: Rules = DEFAULT_RULES, tokenizer=None) -> Llava:
    """A randomly initialised model (tests, benchmarks)."""
    return Llava(config, init_params(config, jax.random.PRNGKey(seed), mesh, rules), tokenizer, mesh, rules)


__all__ = ["Llava", "load", "load_components", "load_tokenizer", "random_model", "images_per_row"]
