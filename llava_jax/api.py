"""The public facade: `load`, `load_components`, `convert`, `random_model` and the loaded-model object `Llava`.

This module only joins the subpackages (loaders in `convert`, generation and
chat in `infer`, the model in `model`); nothing in the package imports it back.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from llava_jax.config import LlavaConfig
from llava_jax.convert import loaders
from llava_jax.convert.loaders import LoadedModel, load_tokenizer
from llava_jax.convert.native import save_native
from llava_jax.model.inputs import model_images
from llava_jax.model.llava import LlavaModel
from llava_jax.sharding import DEFAULT_RULES, Rules, mesh_context


@functools.partial(jax.jit, static_argnames=("config",))
def _forward_logits(params, input_ids, images, grids, padding_mask, *, config):
    logits, _ = LlavaModel(config).apply(
        {"params": params}, input_ids, images, padding_mask=padding_mask, image_grids=grids
    )
    return logits


@dataclasses.dataclass
class Llava(LoadedModel):
    """A loaded LLaVA model: config, parameters (plain pytree), tokenizer and placement.

    `decode_layers` holds the decoder weights in the unrolled decode layout
    (`llava_jax.infer.decode.UnrolledLayers`: one more copy of the decoder layers'
    weights, its size in `.nbytes`), made by the first `generate`/`chat` that uses
    that layout and reused while `params` are the same arrays; set it to None to
    free the copy, or generate with `layout="scan"` to never make it.
    """

    decode_layers: object = None

    @classmethod
    def wrap(cls, loaded: LoadedModel) -> Llava:
        """The `Llava` for what a loader returned (no copy of the parameters)."""
        return cls(loaded.config, loaded.params, loaded.tokenizer, loaded.mesh, loaded.rules)

    @property
    def module(self) -> LlavaModel:
        return LlavaModel(self.config)

    def logits(self, input_ids, pixel_values=None, attention_mask=None, image_sizes=None) -> np.ndarray:
        """Full-sequence logits for HF-processor inputs.

        Args:
          input_ids: int[B, T] with `image_seq_length` placeholders per image (anyres: as many as
            each image's size gives, `config.image_tokens(h, w)`).
          pixel_values: float[N, 3, S, S] channels-first (as `LlavaProcessor` returns), or None;
            anyres: float[N, K, 3, S, S] tiles (as `LlavaNextProcessor` returns).
          attention_mask: int/bool[B, T], 1 for real tokens (default all ones).
          image_sizes: anyres only, int[N, 2] original (height, width) of each image.
        Returns:
          float32[B, T, V], comparable one to one with `LlavaForConditionalGeneration(...).logits`
          (`LlavaNextForConditionalGeneration` for anyres models).
        """
        ids = np.asarray(input_ids, np.int32)
        images, grids = model_images(ids, pixel_values, image_sizes, self.config)
        mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
        with mesh_context(self.mesh, self.rules):
            out = _forward_logits(self.params, ids, images, grids, mask, config=self.config)
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


def load(
    path: str,
    *,
    dtype: str | None = "float32",
    mesh=None,
    rules: Rules = DEFAULT_RULES,
    vision_tower: str | None = None,
    llm: str | None = None,
) -> Llava:
    """Load a LLaVA model: llava-hf, the original repo's llava-v1.5-7b/13b, or a llava_jax checkpoint.

    Args:
      path: the model directory; or a stage-1 release (`mm_projector.bin`, or the directory
        holding it alone), joined with `llm` and `vision_tower` (see `load_components`).
      dtype: parameter and compute dtype ('float32', 'bfloat16'); None keeps the stored dtype.
      mesh: place parameters sharded on this mesh (by `rules`) straight from the files.
      vision_tower: HF CLIP directory for original checkpoints: its config always (the original
        `config.json` names the tower, e.g. the hub name openai/clip-vit-large-patch14-336, but
        does not describe it), its weights when the checkpoint has none.
      llm: the LLaMA/Vicuna directory, with a stage-1 projector only.
    Returns:
      `Llava` with `.config`, `.params`, `.tokenizer` (None when the directory has none).
    """
    loaded = loaders.load_model(path, dtype=dtype, mesh=mesh, rules=rules, vision_tower=vision_tower, llm=llm)
    return Llava.wrap(loaded)


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
) -> Llava:
    """HF CLIP + HF LLaMA/Vicuna weights and a projector: the stage-1 release's, or a fresh one.

    `load_components(clip_dir, vicuna_dir, projector="…/mm_projector.bin")` joins the released
    stage-1 projector with its towers; without `projector` it is stage-1 initialisation.
    See `llava_jax.convert.loaders.load_components`.
    """
    loaded = loaders.load_components(
        vision_dir, llm_dir, config, projector=projector, dtype=dtype, mesh=mesh, rules=rules, seed=seed
    )
    return Llava.wrap(loaded)


def convert(
    src: str,
    dst: str,
    *,
    dtype: str | None = "float32",
    vision_tower: str | None = None,
    llm: str | None = None,
) -> LoadedModel:
    """Convert an HF / original checkpoint (or a stage-1 projector with `llm` and `vision_tower`) into a
    llava_jax checkpoint, one parameter in memory at a time.

    Returns the config and tokenizer (`params` is None: nothing is kept in memory); load `dst` to use it.
    """
    return loaders.convert(src, dst, dtype=dtype, vision_tower=vision_tower, llm=llm)


def random_model(config: LlavaConfig, seed: int = 0, mesh=None, rules: Rules = DEFAULT_RULES, tokenizer=None) -> Llava:
    """A randomly initialised model (tests, benchmarks)."""
    return Llava.wrap(loaders.random_model(config, seed, mesh, rules, tokenizer))


__all__ = ["Llava", "convert", "load", "load_components", "load_tokenizer", "random_model"]
