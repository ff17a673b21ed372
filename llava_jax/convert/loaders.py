"""Reading checkpoints into parameter trees: HF, original LLaVA and llava_jax directories, HF components.

Every loader returns a `LoadedModel` (config, params, tokenizer and placement);
`llava_jax.Llava` (the public facade in `llava_jax.api`) wraps one with
inference and saving methods. Parameters are read one tensor at a time and
placed sharded on `mesh` when one is given.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from llava_jax.config import ConfigError, LlavaConfig, compose_llava
from llava_jax.convert.hf import canonical_sources, iter_params, nest, read_params
from llava_jax.convert.hf_config import (
    config_kind,
    llama_config_from_hf,
    llava_config_from_hf,
    vision_config_from_hf,
)
from llava_jax.convert.native import is_native, load_native, save_native
from llava_jax.convert.tensors import CheckpointError, weight_files
from llava_jax.model.params import init_params, merge_trees, param_shardings
from llava_jax.model.projector import Projector
from llava_jax.sharding import DEFAULT_RULES, Rules

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


@dataclasses.dataclass
class LoadedModel:
    """A model as the loaders return it: config, parameters (plain pytree), tokenizer and placement."""

    config: LlavaConfig
    params: dict | None
    tokenizer: object = None
    mesh: object = None
    rules: Rules = DEFAULT_RULES


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
        config = llava_config_from_hf(hf, vision_hf=vision_hf).with_dtype(dtype)
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


def load_model(
    path: str,
    *,
    dtype: str | None = "float32",
    mesh=None,
    rules: Rules = DEFAULT_RULES,
    vision_tower: str | None = None,
) -> LoadedModel:
    """Load a LLaVA model from an HF LLaVA directory, an original LLaVA checkpoint or a llava_jax checkpoint.

    Args:
      path: the model directory.
      dtype: parameter and compute dtype ('float32', 'bfloat16'); None keeps the stored dtype.
      mesh: place parameters sharded on this mesh (by `rules`) straight from the files.
      vision_tower: HF CLIP directory for original checkpoints: its config always (the original
        `config.json` names the tower but does not describe it; default CLIP ViT-L/14-336 or the
        local directory `mm_vision_tower` names), its weights when the checkpoint has none.
    Returns:
      `LoadedModel` with `.config`, `.params`, `.tokenizer` (None when the directory has none).
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such model directory")
    if is_native(path):
        config, params = load_native(path, dtype=dtype, mesh=mesh, rules=rules)
        return LoadedModel(config, params, load_tokenizer(path), mesh, rules)
    config, stream = iter_checkpoint(path, dtype=dtype, mesh=mesh, rules=rules, vision_tower=vision_tower)
    params: dict = {}
    for param_path, value in stream:
        params = merge_trees(params, nest(param_path, value))
    return LoadedModel(config, params, load_tokenizer(path), mesh, rules)


def convert(src: str, dst: str, *, dtype: str | None = "float32", vision_tower: str | None = None) -> LoadedModel:
    """Convert an HF / original checkpoint into a llava_jax checkpoint, one parameter in memory at a time.

    Returns a `LoadedModel` whose `params` is None (nothing kept in memory); load `dst` to use it.
    """
    if not os.path.isdir(src):
        raise CheckpointError(f"{src}: no such model directory")
    config, stream = iter_checkpoint(src, dtype=dtype, vision_tower=vision_tower)
    tokenizer = load_tokenizer(src)
    save_native(dst, stream, config, tokenizer)
    return LoadedModel(config, None, tokenizer)


def load_components(
    vision_dir: str,
    llm_dir: str,
    config: LlavaConfig | None = None,
    *,
    dtype: str = "float32",
    mesh=None,
    rules: Rules = DEFAULT_RULES,
    seed: int = 0,
) -> LoadedModel:
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
    return LoadedModel(config, params, load_tokenizer(llm_dir), mesh, rules)


def init_projector(config: LlavaConfig, rng, mesh=None, rules: Rules = DEFAULT_RULES) -> dict:
    """Freshly initialised projector parameters alone (the LLM and tower are never materialised twice)."""
    module = Projector(config.projector)
    dummy = jnp.zeros((1, 1, config.projector.in_features), jnp.float32)
    init = lambda r: nn.meta.unbox(module.init(r, dummy)["params"])
    if mesh is None:
        return jax.jit(init)(rng)
    return jax.jit(init, out_shardings=param_shardings(config, mesh, rules)["projector"])(rng)


def random_model(
    config: LlavaConfig, seed: int = 0, mesh=None, rules: Rules = DEFAULT_RULES, tokenizer=None
) -> LoadedModel:
    """A randomly initialised model (tests, benchmarks)."""
    return LoadedModel(config, init_params(config, jax.random.PRNGKey(seed), mesh, rules), tokenizer, mesh, rules)
