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

from llava_jax.api import Llava, convert, load, load_components, random_model
from llava_jax.config import AnyresConfig, LlamaConfig, LlavaConfig, ProjectorConfig, VisionConfig
from llava_jax.convert.hf_config import llava_config_from_hf, llava_config_to_hf
from llava_jax.presets import (
    PRESETS,
    bench_small,
    llava_v15_7b,
    llava_v15_13b,
    llava_v15_hd_7b,
    llava_v15_hd_13b,
    llava_v16_vicuna_7b,
    llava_v16_vicuna_13b,
    tiny,
)

__version__ = "0.1.0"


def __getattr__(name):
    # Preprocessing pulls in PIL; import it only when asked for.
    if name == "preprocess_image":
        from llava_jax.data.image import preprocess_image

        return preprocess_image
    raise AttributeError(f"module 'llava_jax' has no attribute {name!r}")


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
