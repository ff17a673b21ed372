"""The `Answerer` backed by a loaded `llava_jax.Llava`: tokenise, preprocess, generate, decode.

Prompts are tokenised with `llava_jax.data.encode.tokenizer_image_token` (the
reference's split-at-`<image>` tokenisation, the marker expanded to
`image_seq_length` placeholders) and images preprocessed as the reference
evaluation does (see `reference_pixels`). Batches are topped up to a fixed
number of rows (repeating the last request; those answers are dropped) and
left-padded to a length bucket, so a run compiles a handful of shapes. With a
mesh (`load(..., mesh=...)`) the batch axis is sharded over the devices.

High-resolution (`anyres`) models get each image's tiles and as many
placeholders as its size makes (LLaVA-NeXT's evaluation), see `reference_pixels`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from llava_jax.eval.records import model_name_from_path
from llava_jax.eval.runner import IMAGE_THREADS, Request


def reference_pixels(image: Image.Image, *, mode: str, size: int, grid_pinpoints=None) -> np.ndarray:
    """float32[size, size, 3] pixels of one image as LLaVA-1.5's evaluation computed them.

    `anyres`: float32[1 + rows * cols, size, size, 3], the tiles of the RGB image
    (LLaVA-NeXT's `process_anyres_image`, equal to transformers' LlavaNext processor).

    RGB images (every benchmark whose script calls `.convert('RGB')`) are
    exactly `preprocess_image(image, mode=mode)`. ScienceQA and MMBench hand
    the raw PIL image over: the reference pads it in its own mode
    (`expand2square`) and its transformers 4.37 CLIP processor then converts
    with a plain `.convert('RGB')`, which drops alpha instead of compositing.
    Both are reproduced here. Modes whose `Image.new` rejects an RGB fill
    (greyscale), which make the reference fail, are converted to RGB first.
    """
    from llava_jax.data.image import expand_to_square, preprocess_image

    if mode == "anyres":
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return preprocess_image(rgb, mode="anyres", size=size, alpha="drop", grid_pinpoints=grid_pinpoints)
    if mode == "pad":
        try:
            image = expand_to_square(image)
        except (TypeError, ValueError):
            image = expand_to_square(image.convert("RGB"))
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    # An RGB PNG may still carry a tRNS colour key; 4.37 ignored it, as `alpha="drop"` does.
    return preprocess_image(rgb, mode="square", size=size, alpha="drop")


@dataclasses.dataclass
class PreparedBatch:
    """A padded batch ready for `generate`.

    input_ids / attention_mask: int32[B, T] left-padded; pixel_values:
    float32[num_images, 3, H, W] or None (anyres: a list of float32[k_i, 3, H, W] tiles,
    with `image_sizes` int64[num_images, 2]); the first `real` rows carry requests.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    pixel_values: np.ndarray | list | None
    real: int
    max_new_tokens: int
    image_sizes: np.ndarray | None = None


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class ModelAnswerer:
    """Greedy answers from a model returned by `llava_jax.load`.

    batch_size: rows per `generate` call, rounded up to a multiple of the mesh's
        batch shards so the batch axis divides evenly.
    length_multiple: prompt lengths are left-padded to a multiple of this.
    """

    def __init__(
        self,
        model: Any,
        *,
        model_id: str,
        batch_size: int = 8,
        length_multiple: int = 64,
    ):
        if model.tokenizer is None:
            raise ValueError("evaluation needs the model's tokenizer (the model directory has none)")
        self.model = model
        self.model_id = model_id
        self.config = model.config
        self.tokenizer = model.tokenizer
        shards = 1
        if getattr(model, "mesh", None) is not None:
            from llava_jax.sharding import DEFAULT_RULES, batch_axes

            axes = batch_axes(getattr(model, "rules", DEFAULT_RULES))
            shards = int(np.prod([model.mesh.shape[a] for a in axes if a in model.mesh.shape]))
        self.batch_size = _round_up(max(batch_size, 1), shards)
        self.length_multiple = length_multiple
        aspect = getattr(self.config, "image_aspect_ratio", "pad")
        self.mode = aspect if aspect in ("pad", "square", "anyres") else "pad"
        from llava_jax.infer.generate import default_stop_ids

        self.stop_ids = set(default_stop_ids(model))
        # Resizing releases the GIL: preprocess a batch's images in parallel.
        self._workers = ThreadPoolExecutor(max_workers=IMAGE_THREADS)

    @classmethod
    def from_path(
        cls,
        path: str,
        *,
        batch_size: int = 8,
        dtype: str | None = "bfloat16",
        mesh=None,
        **kwargs,
    ) -> ModelAnswerer:
        """Load a model directory as `llava_jax.load` does (on `mesh` when given) and wrap it."""
        from llava_jax.convert.loaders import load_model

        model = load_model(path, dtype=dtype, mesh=mesh)
        return cls(model, model_id=model_name_from_path(path), batch_size=batch_size, **kwargs)

    @property
    def model_size(self) -> str | None:
        """ "7B" / "13B" for the LLaVA-1.5 shapes, else None (no Model Zoo comparison)."""
        llm = self.config.llm
        return {(4096, 32): "7B", (5120, 40): "13B"}.get((llm.hidden_size, llm.num_layers))

    def prepare(self, requests: Sequence[Request]) -> PreparedBatch:
        """Tokenise, preprocess images and pad (CPU only; runs ahead on a worker thread)."""
        from llava_jax.data.encode import tokenizer_image_token

        if not requests:
            raise ValueError("empty batch")
        if len(requests) > self.batch_size:
            raise ValueError(f"{len(requests)} requests exceed the batch size {self.batch_size}")
        rows = list(requests) + [requests[-1]] * (self.batch_size - len(requests))
        c = self.config
        # An anyres image's placeholder count depends on its size (one image per request).
        per_row = [c.image_tokens(r.image.height, r.image.width) if r.image is not None else 1 for r in rows]
        ids = [
            tokenizer_image_token(r.prompt, self.tokenizer, image_token_index=c.image_token_index, image_seq_length=n)
            for r, n in zip(rows, per_row)
        ]
        length = _round_up(max(len(x) for x in ids), self.length_multiple)
        pad = self.config.llm.pad_token_id if self.config.llm.pad_token_id is not None else 0
        input_ids = np.full((len(rows), length), pad, dtype=np.int32)
        mask = np.zeros((len(rows), length), dtype=np.int32)
        for i, x in enumerate(ids):
            input_ids[i, length - len(x) :] = x
            mask[i, length - len(x) :] = 1
        size, pins = c.vision.image_size, c.image_grid_pinpoints or None
        with_image = [r.image for r in rows if r.image is not None]
        images = list(
            self._workers.map(
                lambda im: reference_pixels(im, mode=self.mode, size=size, grid_pinpoints=pins), with_image
            )
        )
        sizes = None
        if self.mode == "anyres":
            pixels = [np.moveaxis(x, -1, -3) for x in images] or None
            sizes = np.asarray([(im.height, im.width) for im in with_image], np.int64).reshape(-1, 2)
        else:
            pixels = np.stack(images).transpose(0, 3, 1, 2) if images else None
        return PreparedBatch(
            input_ids,
            mask,
            pixels,
            len(requests),
            max(r.max_new_tokens for r in requests),
            sizes,
        )

    def answer(self, prepared: PreparedBatch) -> list[str]:
        """Greedy generation; each row cut at its stop token, special tokens dropped, stripped."""
        room = self.config.llm.max_position_embeddings - int(prepared.attention_mask.sum(1).max())
        from llava_jax.infer.generate import generate

        tokens = generate(
            self.model,
            prepared.input_ids,
            prepared.pixel_values,
            prepared.attention_mask,
            max_new_tokens=max(1, min(prepared.max_new_tokens, room)),
            temperature=0.0,
            pad_to_multiple=self.length_multiple,
            image_sizes=prepared.image_sizes,
        )
        texts = []
        for row in np.asarray(tokens)[: prepared.real]:
            ids = [int(t) for t in row]
            cut = next((i for i, t in enumerate(ids) if t in self.stop_ids), len(ids))
            texts.append(self.tokenizer.decode(ids[:cut], skip_special_tokens=True).strip())
        return texts
