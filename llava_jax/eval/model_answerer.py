"""The `Answerer` backed by a loaded llava_jax model: tokenise, preprocess, generate, decode.

Prompts are tokenised the way LLaVA's `tokenizer_image_token` does (each text
piece around `<image>` tokenised on its own, BOS kept only on the first), with
the image marker expanded to `image_seq_length` placeholder ids as the HF
processor does, so the model sees the reference's token sequence. Batches are
left-padded to a length bucket and topped up to a fixed batch size (repeating
the last request, whose answers are dropped) so that every batch of a run has
the same shapes and compiles once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from llava_jax.eval.prompts import IMAGE_TOKEN
from llava_jax.eval.records import model_name_from_path
from llava_jax.eval.runner import Request


def tokenize_with_image(
    prompt: str, tokenizer, image_token_index: int, image_seq_length: int
) -> list[int]:
    """Token ids of `prompt` with each `<image>` replaced by `image_seq_length` placeholder ids.

    Mirrors the reference's `tokenizer_image_token`: pieces are tokenised
    separately (so the text after an image starts with SentencePiece's prefix
    space, as in LLaVA), and the BOS of every piece but the first is dropped.
    """
    pieces = [tokenizer(piece).input_ids for piece in prompt.split(IMAGE_TOKEN)]
    bos = getattr(tokenizer, "bos_token_id", None)
    has_bos = bool(pieces and pieces[0] and bos is not None and pieces[0][0] == bos)
    ids: list[int] = list(pieces[0])
    for piece in pieces[1:]:
        ids.extend([image_token_index] * image_seq_length)
        ids.extend(piece[1:] if has_bos and piece and piece[0] == bos else piece)
    return ids


@dataclasses.dataclass
class PreparedBatch:
    """A padded batch ready for `generate`.

    input_ids / attention_mask: int32[B, T], left-padded; pixel_values:
    float32[num_images, 3, H, W] or None; `real` rows carry requests, the rest
    are fillers.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    pixel_values: np.ndarray | None
    real: int
    max_new_tokens: int


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class ModelAnswerer:
    """Greedy answers from a model returned by `llava_jax.load`.

    batch_size: rows per `generate` call (smaller batches are topped up); rounded
        up to a multiple of the device count so the batch axis shards evenly.
    length_multiple: prompt lengths are padded to a multiple of this.
    """

    def __init__(
        self,
        model: Any,
        *,
        model_id: str,
        batch_size: int = 8,
        length_multiple: int = 64,
        num_devices: int | None = None,
    ):
        if num_devices is None:
            import jax

            num_devices = jax.device_count()
        self.model = model
        self.model_id = model_id
        self.config = model.config
        self.tokenizer = model.tokenizer
        self.batch_size = _round_up(max(batch_size, 1), max(num_devices, 1))
        self.length_multiple = length_multiple
        self.image_size = self.config.vision.image_size
        self.mode = getattr(self.config, "image_aspect_ratio", "pad") or "pad"
        if self.mode not in ("pad", "square"):
            self.mode = "square"
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = self.config.llm.pad_token_id
        if pad is None:
            pad = 0  # masked out; any id works
        self.pad_id = int(pad)
        eos = self.config.llm.eos_token_id
        if eos is None:
            eos = getattr(self.tokenizer, "eos_token_id", None)
        self.eos_ids = {
            int(e)
            for e in (eos if isinstance(eos, (list, tuple)) else [eos])
            if e is not None
        }

    @classmethod
    def from_path(
        cls, path: str, *, batch_size: int = 8, **load_kwargs
    ) -> ModelAnswerer:
        """Load a model directory with `llava_jax.load` and wrap it."""
        import llava_jax

        model = llava_jax.load(path, **load_kwargs)
        return cls(model, model_id=model_name_from_path(path), batch_size=batch_size)

    @property
    def model_size(self) -> str | None:
        """ "7B" / "13B" for the LLaVA-1.5 shapes, else None (no Model Zoo comparison)."""
        llm = self.config.llm
        return {(4096, 32): "7B", (5120, 40): "13B"}.get(
            (llm.hidden_size, llm.num_layers)
        )

    def prepare(self, requests: Sequence[Request]) -> PreparedBatch:
        """Tokenise, preprocess images and pad (CPU only; runs ahead on a worker thread)."""
        from llava_jax.data.image import preprocess_image

        if not requests:
            raise ValueError("empty batch")
        if len(requests) > self.batch_size:
            raise ValueError(
                f"{len(requests)} requests exceed batch size {self.batch_size}"
            )
        rows = list(requests) + [requests[-1]] * (self.batch_size - len(requests))
        ids = [
            tokenize_with_image(
                r.prompt,
                self.tokenizer,
                self.config.image_token_index,
                self.config.image_seq_length,
            )
            for r in rows
        ]
        length = _round_up(max(len(x) for x in ids), self.length_multiple)
        input_ids = np.full((len(rows), length), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(rows), length), dtype=np.int32)
        for i, x in enumerate(ids):
            input_ids[i, length - len(x) :] = x
            mask[i, length - len(x) :] = 1
        images = [
            preprocess_image(r.image, mode=self.mode, size=self.image_size)
            for r in rows
            if r.image is not None
        ]
        pixels = (
            np.stack(images).transpose(0, 3, 1, 2).astype(np.float32)
            if images
            else None
        )
        return PreparedBatch(
            input_ids,
            mask,
            pixels,
            len(requests),
            max(r.max_new_tokens for r in requests),
        )

    def answer(self, prepared: PreparedBatch) -> list[str]:
        """Greedy generation, cut at EOS, special tokens dropped, whitespace stripped."""
        tokens = np.asarray(
            self.model.generate(
                prepared.input_ids,
                prepared.pixel_values,
                prepared.attention_mask,
                max_new_tokens=prepared.max_new_tokens,
                temperature=0.0,
            )
        )
        texts = []
        for row in tokens[: prepared.real]:
            ids = row.tolist()
            cut = next((i for i, t in enumerate(ids) if t in self.eos_ids), len(ids))
            texts.append(
                self.tokenizer.decode(ids[:cut], skip_special_tokens=True).strip()
            )
        return texts
