"""Reading checkpoints into parameter trees: HF, original LLaVA and llava_jax directories, HF components.

Accepted as published: llava-hf (`LlavaForConditionalGeneration`), the original
repo's llava-v1.5-7b/13b (`LlavaLlamaForCausalLM`, flat config with `mm_*`
fields, `.bin` shards; the CLIP tower's config from `vision_tower=`), and the
stage-1 release (`mm_projector.bin`) joined with Vicuna and CLIP
(`load_components(clip, vicuna, projector=...)`, or `load(stage1, llm=, vision_tower=)`).

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
from llava_jax.convert.hf import canonical_sources, iter_params, nest
from llava_jax.convert.hf_config import (
    config_kind,
    llama_config_from_hf,
    llava_config_from_hf,
    original_llava_config,
    vision_config_from_hf,
)
from llava_jax.convert.native import is_native, load_native, save_native
from llava_jax.convert.tensors import CheckpointError, weight_files
from llava_jax.model.params import init_params, merge_trees, param_shardings
from llava_jax.model.projector import Projector
from llava_jax.sharding import DEFAULT_RULES, Rules

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")
PROJECTOR_FILE = "mm_projector.bin"  # what LLaVA's stage 1 saves (`model.mm_projector.{0,2}.*`)


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
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply to read") from None


def load_tokenizer(directory: str):
    """The HF tokenizer saved in `directory` (AutoTokenizer, never remote code), or None."""
    if not any(os.path.exists(os.path.join(directory, f)) for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, trust_remote_code=False)


def projector_file(path: str) -> str | None:
    """The `mm_projector.bin` of a stage-1 release (`path` is the file, or a directory whose only weights it is)."""
    if os.path.isfile(path):
        return path if os.path.basename(path).endswith(".bin") else None
    candidate = os.path.join(path, PROJECTOR_FILE)
    if not os.path.isfile(candidate):
        return None
    others = [n for n in os.listdir(path) if n.endswith((".bin", ".safetensors")) and n != PROJECTOR_FILE]
    return None if others else candidate


def _stage1_config(projector: str) -> dict | None:
    """The stage-1 release's config.json beside its `mm_projector.bin` (original format), or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(projector)), "config.json")
    if not os.path.exists(path):
        return None
    hf = _read_json(path)
    return hf if "mm_projector_type" in hf else None


def _hub_hint(name: str) -> str:
    return (
        f"a local copy of {name!r} (e.g. `huggingface-cli download {name} --local-dir clip`, then "
        f"vision_tower='clip'; CLI --vision-tower clip)"
    )


def _resolve_components(vision_dir, llm_dir, projector, dtype, config=None, stage1: dict | None = None):
    """Config and read plan for CLIP + LLaMA directories and a stage-1 projector file (or None).

    The config: `config` if given; else LLaVA-1.5's settings for the two towers,
    with the `mm_*` settings of the stage-1 release's own config.json when there is one.
    """
    for name, directory in (("vision_tower", vision_dir), ("llm", llm_dir)):
        if directory is None or not os.path.isdir(directory):
            raise CheckpointError(f"{directory}: no such {name} directory (an HF CLIP / LLaMA directory)")
    vision_hf = _read_json(os.path.join(vision_dir, "config.json"))
    llm_hf = _read_json(os.path.join(llm_dir, "config.json"))
    if dtype is None:
        dtype = str(llm_hf.get("dtype") or llm_hf.get("torch_dtype") or "float32")
    if config is None:
        try:
            if stage1 is not None:
                # The stage-1 config repeats Vicuna's fields; the LLaMA directory's own are authoritative.
                settings = {k: v for k, v in stage1.items() if k.startswith("mm_") or k == "image_aspect_ratio"}
                config = original_llava_config({**llm_hf, **settings}, vision_hf)
            else:
                llm_cfg = llama_config_from_hf(llm_hf)
                config = compose_llava(vision_config_from_hf(vision_hf), llm_cfg, image_token_index=llm_cfg.vocab_size)
        except ConfigError as e:
            raise CheckpointError(f"{llm_dir} + {vision_dir}: {e}") from e
    config = config.with_dtype(dtype)
    plan = [
        (canonical_sources(weight_files(vision_dir), where=vision_dir), ("vision",), vision_dir),
        (canonical_sources(weight_files(llm_dir), where=llm_dir), ("llm",), llm_dir),
    ]
    if projector is not None:
        # A LLaVA-1.5 stage-1 projector has no image_newline: an anyres model reads its MLP (the
        # newline is initialised by `load_components`).
        plan.append(
            (canonical_sources([projector], where=projector), ("projector",), projector, _without_newline(config))
        )
    return config, dtype, plan


def _without_newline(config: LlavaConfig) -> LlavaConfig:
    """The same projector shapes without `image_newline` (a non-anyres view of `config`)."""
    if not config.uses_image_newline:
        return config
    return dataclasses.replace(config, image_aspect_ratio="pad", image_grid_pinpoints=(), patch_merge_type="flat")


def _resolve(path: str, dtype, vision_tower, llm=None):
    """Config and a parameter stream for a non-native directory (see `load`)."""
    projector = projector_file(path)
    if projector is not None:
        stage1 = _stage1_config(projector)
        if llm is None or vision_tower is None:
            tower = (stage1 or {}).get("mm_vision_tower", "openai/clip-vit-large-patch14-336")
            raise CheckpointError(
                f"{path}: a stage-1 projector ({os.path.basename(projector)}) alone: pass llm= the LLaMA/Vicuna "
                f"directory it was trained on and vision_tower= {_hub_hint(tower)} (CLI --llm / --vision-tower)"
            )
        return _resolve_components(vision_tower, llm, projector, dtype, stage1=stage1)
    if llm is not None:
        raise CheckpointError(f"{path}: llm= only joins a stage-1 projector (mm_projector.bin) with its LLM")
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
            f"{path}: checkpoint has no vision tower weights; pass vision_tower= "
            f"{_hub_hint(hf.get('mm_vision_tower', 'openai/clip-vit-large-patch14-336'))}"
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


def _stream(config, dtype, plan, mesh, rules):
    """Validated parameter stream over `plan`: (sources, parts, where[, config to read them with])."""
    iterators = []
    for src, parts, where, *own in plan:
        read_config = own[0] if own else config
        iterators.append(iter_params(read_config, src, dtype=dtype, parts=parts, mesh=mesh, rules=rules, where=where))
    # Generators validate lazily: pull the first item of each now so errors come before any work.
    primed = [(next(it), it) for it in iterators]

    def stream():
        for first, it in primed:
            yield first
            yield from it

    return stream()


def iter_checkpoint(
    path: str,
    *,
    dtype: str | None = "float32",
    mesh=None,
    rules: Rules = DEFAULT_RULES,
    vision_tower: str | None = None,
    llm: str | None = None,
):
    """(config, iterator of (param path, jax.Array)) for an HF or original checkpoint, all validated first.

    Every source is validated before the first parameter is produced.
    """
    config, dtype, plan = _resolve(path, dtype, vision_tower, llm)
    return config, _stream(config, dtype, plan, mesh, rules)


def load_model(
    path: str,
    *,
    dtype: str | None = "float32",
    mesh=None,
    rules: Rules = DEFAULT_RULES,
    vision_tower: str | None = None,
    llm: str | None = None,
) -> LoadedModel:
    """Load a LLaVA model from an HF LLaVA directory, an original LLaVA checkpoint or a llava_jax checkpoint.

    Args:
      path: the model directory; or a stage-1 release (`mm_projector.bin`, or the directory
        holding it alone), joined with `llm` and `vision_tower` as `load_components` does.
      dtype: parameter and compute dtype ('float32', 'bfloat16'); None keeps the stored dtype.
      mesh: place parameters sharded on this mesh (by `rules`) straight from the files.
      vision_tower: HF CLIP directory for original checkpoints: its config always (the original
        `config.json` names the tower but does not describe it: without it, the tower
        `mm_vision_tower` names must be a local directory or CLIP ViT-L/14-336), its weights
        when the checkpoint has none.
      llm: the LLaMA/Vicuna directory, with a stage-1 projector only.
    Returns:
      `LoadedModel` with `.config`, `.params`, `.tokenizer` (None when the directory has none).
    """
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such model directory")
    if os.path.isdir(path) and is_native(path):
        config, params = load_native(path, dtype=dtype, mesh=mesh, rules=rules)
        return LoadedModel(config, params, load_tokenizer(path), mesh, rules)
    config, stream = iter_checkpoint(path, dtype=dtype, mesh=mesh, rules=rules, vision_tower=vision_tower, llm=llm)
    params: dict = {}
    for param_path, value in stream:
        params = merge_trees(params, nest(param_path, value))
    return LoadedModel(config, params, _tokenizer_of(path, llm), mesh, rules)


def _tokenizer_of(path: str, llm: str | None):
    """The tokenizer of a checkpoint directory, or of the LLM a stage-1 projector is joined with."""
    return load_tokenizer(llm) if llm is not None else load_tokenizer(path)


def convert(
    src: str,
    dst: str,
    *,
    dtype: str | None = "float32",
    vision_tower: str | None = None,
    llm: str | None = None,
) -> LoadedModel:
    """Convert an HF / original checkpoint (or a stage-1 projector + `llm` + `vision_tower`) into a
    llava_jax checkpoint, one parameter in memory at a time.

    Returns a `LoadedModel` whose `params` is None (nothing kept in memory); load `dst` to use it.
    """
    if not os.path.exists(src):
        raise CheckpointError(f"{src}: no such model directory")
    config, stream = iter_checkpoint(src, dtype=dtype, vision_tower=vision_tower, llm=llm)
    tokenizer = _tokenizer_of(src, llm)
    save_native(dst, stream, config, tokenizer)
    return LoadedModel(config, None, tokenizer)


def load_components(
    vision_dir: str,
    llm_dir: str,
    config: LlavaConfig | None = None,
    *,
    projector: str | None = None,
    dtype: str = "float32",
    mesh=None,
    rules: Rules = DEFAULT_RULES,
    seed: int = 0,
) -> LoadedModel:
    """HF CLIP + HF LLaMA/Vicuna weights and a projector: the stage-1 release's, or a fresh one.

    Args:
      vision_dir: `CLIPVisionModel` or `CLIPModel` directory (e.g. openai/clip-vit-large-patch14-336).
      llm_dir: `LlamaForCausalLM` directory (e.g. lmsys/vicuna-7b-v1.5; its tokenizer is loaded).
      config: the LLaVA config; by default built from the two `config.json` files with
        LLaVA-1.5 settings (feature layer -2, CLS dropped, image token = first id past the
        vocab), the `mm_*` settings and aspect mode taken from the stage-1 release's
        config.json when one lies beside its `mm_projector.bin`. An anyres config
        (LLaVA-1.5-HD) takes a LLaVA-1.5 projector's MLP and a fresh `image_newline`.
      projector: a stage-1 release: its `mm_projector.bin` (keys `model.mm_projector.{0,2}.*`)
        or the directory holding it; None initialises the projector from `seed`.
    """
    stage1 = None
    if projector is not None:
        found = projector_file(projector)
        if found is None:
            raise CheckpointError(f"{projector}: not a stage-1 projector (no {PROJECTOR_FILE} alone there)")
        projector, stage1 = found, _stage1_config(found)
    config, dtype, plan = _resolve_components(vision_dir, llm_dir, projector, dtype, config, stage1)
    params: dict = {}
    for param_path, value in _stream(config, dtype, plan, mesh, rules):
        params = merge_trees(params, nest(param_path, value))
    if projector is None:
        params["projector"] = init_projector(config, jax.random.PRNGKey(seed), mesh, rules)
    params = with_image_newline(params, config, jax.random.PRNGKey(seed), mesh, rules)
    return LoadedModel(config, params, load_tokenizer(llm_dir), mesh, rules)


def init_projector(config: LlavaConfig, rng, mesh=None, rules: Rules = DEFAULT_RULES) -> dict:
    """Freshly initialised projector parameters alone (the LLM and tower are never materialised twice);
    with the `image_newline` of a spatial_unpad anyres config."""
    module = Projector(config.projector, image_newline=config.uses_image_newline)
    dummy = jnp.zeros((1, 1, config.projector.in_features), jnp.float32)
    init = lambda r: nn.meta.unbox(module.init(r, dummy)["params"])
    if mesh is None:
        return jax.jit(init)(rng)
    return jax.jit(init, out_shardings=param_shardings(config, mesh, rules)["projector"])(rng)


def with_image_newline(params: dict, config: LlavaConfig, rng, mesh=None, rules: Rules = DEFAULT_RULES) -> dict:
    """`params` completed for `config`: a fresh `projector/image_newline` when the config needs one the
    parameters lack (an anyres model started from a LLaVA-1.5 projector), dropped when it needs none."""
    projector = dict(params["projector"])
    if config.uses_image_newline and "image_newline" not in projector:
        projector["image_newline"] = init_projector(config, rng, mesh, rules)["image_newline"]
    elif not config.uses_image_newline:
        projector.pop("image_newline", None)
    return {**params, "projector": projector}


def random_model(
    config: LlavaConfig, seed: int = 0, mesh=None, rules: Rules = DEFAULT_RULES, tokenizer=None
) -> LoadedModel:
    """A randomly initialised model (tests, benchmarks)."""
    return LoadedModel(config, init_params(config, jax.random.PRNGKey(seed), mesh, rules), tokenizer, mesh, rules)
