"""Answers about images: conversation template, tokenization, preprocessing, generation, decoding.

`chat(model, images, prompts)` renders each prompt with a conversation template
(`llava_jax.data.conversation`), puts the image marker where LLaVA does (the
front of the first user turn), expands it to `image_seq_length` placeholder
ids, preprocesses the images as the model was trained (`pad`, `square`, or
`anyres` tiles with as many placeholders as each image's size gives),
left-pads the batch and calls `generate`. Rows are independent: a batch gives
the same greedy answers as its prompts one at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from llava_jax.data.conversation import IMAGE_TOKEN, generation_prompt, get_template
from llava_jax.data.encode import tokenizer_image_token
from llava_jax.data.image import preprocess_image, to_rgb
from llava_jax.infer.generate import default_stop_ids, generate

DEFAULT_MAX_NEW_TOKENS = 512  # the reference CLI's default
PAD_TO_MULTIPLE = 16  # prompts share compiled shapes in steps of 16 tokens


class ImageError(ValueError):
    """An image that cannot be read or decoded."""


def load_pixels(image, config) -> np.ndarray:
    """One image (PIL, path, bytes or uint8 array) -> float32[S, S, 3] as the model was trained;
    anyres: float32[1 + rows * cols, S, S, 3] (global view, then the tiles).

    Raises:
      ImageError: the file is missing, unreadable or not an image.
    """
    return _read(image, config)[0]


def _read(image, config) -> tuple[np.ndarray, tuple[int, int]]:
    """(pixels as `load_pixels` gives them, the image's (height, width))."""
    try:
        pil = to_rgb(image)
        pixels = preprocess_image(
            pil,
            mode=config.image_aspect_ratio,
            size=config.vision.image_size,
            grid_pinpoints=config.image_grid_pinpoints or None,
        )
        return pixels, (pil.height, pil.width)
    except (OSError, ValueError, SyntaxError) as e:  # PIL reports bad files as OSError subclasses
        where = f" {os.fspath(image)!r}" if isinstance(image, (str, os.PathLike)) else ""
        raise ImageError(f"cannot read image{where}: {type(e).__name__}: {e}") from e


def _rows(images, prompts) -> tuple[list, list]:
    """Pair images with prompts: equal-length lists, or one side broadcast to the other."""
    single_conversation = isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], tuple)
    prompts = [prompts] if isinstance(prompts, str) or single_conversation else list(prompts)
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    if len(images) == 1 and len(prompts) > 1:
        images = images * len(prompts)
    if len(prompts) == 1 and len(images) > 1:
        prompts = prompts * len(images)
    if len(images) != len(prompts):
        raise ValueError(
            f"{len(images)} images for {len(prompts)} prompts: give one image per prompt, "
            f"one image for all prompts, or one prompt for all images"
        )
    return images, prompts


def build_prompt(prompt, has_image: bool, template="vicuna_v1") -> str:
    """The rendered generation prompt for a question (or `(role, message)` turns ending with the user's).

    With an image, `<image>` goes to the front of the first user turn (added when
    absent, as LLaVA's CLI does); a prompt may hold at most one marker, and
    none without an image.
    """
    turns = [("user", prompt)] if isinstance(prompt, str) else list(prompt)
    markers = sum((message or "").count(IMAGE_TOKEN) for _, message in turns)
    if markers > 1:
        raise ValueError(
            f"prompt has {markers} {IMAGE_TOKEN} markers but one image: LLaVA-1.5 takes one image per conversation"
        )
    if markers and not has_image:
        raise ValueError(f"prompt has an {IMAGE_TOKEN} marker but no image was given")
    if markers and IMAGE_TOKEN not in (turns[0][1] or ""):
        raise ValueError(f"the {IMAGE_TOKEN} marker must be in the first turn")
    return generation_prompt(template, turns, image=has_image)


def encode_batch(model, images: Sequence, prompts: Sequence, template="vicuna_v1", *, with_sizes: bool = False):
    """Left-padded HF-style inputs for rows of (image or None, prompt).

    Returns:
      input_ids int32[B, T], pixel_values float32[N, 3, S, S] or None, attention_mask bool[B, T];
      anyres models: pixel_values is a list of N float32[k_i, 3, S, S] tiles. With `with_sizes`
      also int64[N, 2] image (height, width), which anyres models need (`generate(image_sizes=)`).
    """
    tok, config = model.tokenizer, model.config
    rows, pixels, sizes = [], [], []
    for image, prompt in zip(images, prompts):
        text = build_prompt(prompt, image is not None, template)
        per_image = config.image_seq_length
        if image is not None:
            pix, hw = _read(image, config)
            pixels.append(np.moveaxis(pix, -1, -3))
            sizes.append(hw)
            per_image = config.image_tokens(*hw)
        rows.append(
            tokenizer_image_token(text, tok, image_token_index=config.image_token_index, image_seq_length=per_image)
        )
    t = max(len(r) for r in rows)
    pad = config.llm.pad_token_id if config.llm.pad_token_id is not None else 0
    ids = np.full((len(rows), t), pad, np.int32)
    mask = np.zeros((len(rows), t), bool)
    for b, row in enumerate(rows):
        ids[b, t - len(row) :] = row
        mask[b, t - len(row) :] = True
    pixel_values = (pixels if config.anyres else np.stack(pixels)) if pixels else None
    if with_sizes:
        return ids, pixel_values, mask, np.asarray(sizes, np.int64).reshape(-1, 2)
    return ids, pixel_values, mask


def _answer(tok, tokens: np.ndarray, stop_ids: set[int], stop_str: str | None) -> str:
    text = tok.decode([int(t) for t in tokens if int(t) not in stop_ids], skip_special_tokens=True)
    if stop_str and stop_str in text:
        text = text[: text.index(stop_str)]
    return text.strip()


def chat(
    model,
    images,
    prompts,
    *,
    template="vicuna_v1",
    max_new_tokens: int | None = None,
    stream: Callable[[list], None] | None = None,
    **sampling,
) -> list[str]:
    """Answers to questions about images.

    Args:
      model: a loaded `llava_jax.Llava` with a tokenizer.
      images: one image or a list (PIL images, paths, bytes or uint8 arrays; None for text only).
      prompts: one question or a list; a question may also be a conversation, a list of
        `(role, message)` turns ending with the user's (the image belongs to its first turn).
      template: conversation template name (`vicuna_v1`, `llava_v1`, `plain`, `llava_hf`).
      max_new_tokens: most tokens per answer (default: 512, or what the context has room for).
      stream: called with one text delta per row as tokens arrive.
      **sampling: `temperature`, `top_p`, `top_k`, `seed`, ... (see `generate`).
    Returns:
      One answer string per row, the stop string and surrounding whitespace removed.
    Raises:
      ImageError for unreadable images; ValueError for marker/image mismatches, prompts longer
      than the context, or `max_new_tokens` beyond it.
    """
    if model.tokenizer is None:
        raise ValueError("chat needs a tokenizer: the model directory has none")
    tmpl = get_template(template)
    images, prompts = _rows(images, prompts)
    ids, pixels, mask, sizes = encode_batch(model, images, prompts, tmpl, with_sizes=True)
    if max_new_tokens is None:
        room = model.config.llm.max_position_embeddings - int(mask.sum(axis=1).max())
        max_new_tokens = max(1, min(DEFAULT_MAX_NEW_TOKENS, room))
    stop_ids = set(default_stop_ids(model))
    eos_text = model.tokenizer.eos_token
    # `</s>` ends vicuna replies as the EOS id; only other stop strings need the text check.
    stop_strings = [tmpl.stop_str] if tmpl.stop_str and tmpl.stop_str != eos_text else []
    sampling.setdefault("pad_to_multiple", PAD_TO_MULTIPLE)
    if model.config.anyres:
        sampling["image_sizes"] = sizes
    out = generate(
        model, ids, pixels, mask, max_new_tokens=max_new_tokens, stop_strings=stop_strings, stream=stream, **sampling
    )
    return [_answer(model.tokenizer, row, stop_ids, tmpl.stop_str) for row in out]
