"""llava_jax: LLaVA-1.5 (Improved Baselines with Visual Instruction Tuning) in JAX/Flax.

Public API:
  load(path, *, dtype, mesh) -> Llava      llava-hf (LLaVA and LLaVA-NeXT) / original llava-v1.5, v1.6 / llava_jax
  load_components(vision_dir, llm_dir, projector=None)  CLIP + Vicuna + the stage-1 projector (or a fresh one)
  convert(src, dst)                       HF / original -> llava_jax checkpoint, streamed
  (docs/checkpoints.md: the commands for each released artifact)
  Llava.logits / .generate / .chat / .save / .export_hf
  preprocess_image(image, *, mode, size)  CLIP preprocessing with LLaVA's pad mode (anyres: tiles, docs/hd.md)
  configs: VisionConfig, ProjectorConfig, LlamaConfig, LlavaConfig, AnyresConfig; PRESETS and the preset functions;
  llava_config_from_hf / llava_config_to_hf (HF and original `config.json` dicts)
"""

import importlib
import sys
import types

__version__ = "0.1.0"

# Imported on first use (PEP 562), so that `import llava_jax.cli` (the `llava-jax` command, which
# re-executes itself for `train` and `demo`) and `llava_jax.runtime` load no JAX until they need it.
_LAZY = {
    "Llava": "llava_jax.api",
    "convert": "llava_jax.api",
    "load": "llava_jax.api",
    "load_components": "llava_jax.api",
    "random_model": "llava_jax.api",
    "AnyresConfig": "llava_jax.config",
    "LlamaConfig": "llava_jax.config",
    "LlavaConfig": "llava_jax.config",
    "ProjectorConfig": "llava_jax.config",
    "VisionConfig": "llava_jax.config",
    "llava_config_from_hf": "llava_jax.convert.hf_config",
    "llava_config_to_hf": "llava_jax.convert.hf_config",
    "PRESETS": "llava_jax.presets",
    "bench_small": "llava_jax.presets",
    "llava_v15_7b": "llava_jax.presets",
    "llava_v15_13b": "llava_jax.presets",
    "llava_v15_hd_7b": "llava_jax.presets",
    "llava_v15_hd_13b": "llava_jax.presets",
    "llava_v16_vicuna_7b": "llava_jax.presets",
    "llava_v16_vicuna_13b": "llava_jax.presets",
    "tiny": "llava_jax.presets",
    "preprocess_image": "llava_jax.data.image",
}


class _Package(types.ModuleType):
    """`llava_jax.convert` is the `convert` function, as it was when this file imported it eagerly: the
    import system's binding of the `llava_jax.convert` subpackage onto this module is skipped (the
    subpackage is in `sys.modules` and imports by its dotted name as before)."""

    def __setattr__(self, name, value):
        if name == "convert" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llava_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "PRESETS",
    "AnyresConfig",
    "Llava",
    "LlamaConfig",
    "LlavaConfig",
    "ProjectorConfig",
    "VisionConfig",
    "bench_small",
    "convert",
    "llava_config_from_hf",
    "llava_config_to_hf",
    "llava_v15_7b",
    "llava_v15_13b",
    "llava_v15_hd_7b",
    "llava_v15_hd_13b",
    "llava_v16_vicuna_7b",
    "llava_v16_vicuna_13b",
    "load",
    "load_components",
    "preprocess_image",
    "random_model",
    "tiny",
]
