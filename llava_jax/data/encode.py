"""LLaVA training examples to token ids and labels, with labels exact by construction.

`input_ids` follow the reference training code: the rendered prompt is split at
`<image>`, each piece tokenized (BOS kept only at the start), and the image's
placeholder ids inserted in between (`image_seq_length` of them, where the
reference inserts one sentinel and splices 576 embeddings later).

Tokenizers that ship a sentencepiece `tokenizer.model` (LLaVA-1.5's, Vicuna's,
llava-hf's) tokenize each piece as the slow LLaMA tokenizer LLaVA trained with
did (`llava_jax.data.sentencepiece_tokens`); other tokenizers are used as they
are (a fast tokenizer, for its offsets).

Labels: the reference derives them from token counts of re-tokenized pieces,
which breaks on some tokenizers ("tokenization mismatch", after which it
zeroes the sample's loss). Here each token of the whole-prompt tokenization is
assigned by its character span: supervised when it lies inside an assistant
reply (plus the space before it and its `</s>`), not otherwise. A token whose
span crosses a reply boundary means the whole-prompt and per-piece
tokenizations disagree; the sample is dropped with reason
`tokenization_mismatch` (counted and reported by id, never silently zeroed).

High-resolution (`anyres`) images become a number of tokens that depends on
their size: `EncodeFn` reads each image's size from its file header (no pixels
decoded) and gives the sample `AnyresConfig.num_tokens(h, w)` placeholders,
recording the size (`image_hw`) so decoding can check it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from llava_jax.data import sentencepiece_tokens
from llava_jax.data.conversation import (
    IMAGE_TOKEN,
    get_template,
    move_image_to_front,
    training_segments,
)
from llava_jax.data.image import image_hw
from llava_jax.data.paths import DEFAULT_MAX_IMAGE_BYTES, ImageFileError, check_image_file

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

# Reasons a sample is dropped; stable names used in counters and logs.
REASONS = (
    "malformed",
    "no_conversations",
    "not_alternating",
    "empty_turn",
    "non_utf8",
    "image_token_in_text_only",
    "missing_image_token",
    "multiple_image_tokens",
    "image_token_in_answer",
    "no_image",
    "missing_image",
    "image_outside_root",
    "not_a_regular_file",
    "image_too_large",
    "corrupt_image",
    "tokenization_mismatch",
    "image_cut_by_truncation",
    "no_supervised_tokens",
)


class DataError(ValueError):
    """A sample that cannot be used, with its id and a reason from `REASONS`."""

    def __init__(self, sample_id: str, reason: str, detail: str = ""):
        self.sample_id = str(sample_id)
        self.reason = reason
        self.detail = detail
        super().__init__(f"sample {self.sample_id!r}: {reason}" + (f" ({detail})" if detail else ""))


def _split_tokenize(prompt: str, tokenizer, *, with_offsets: bool):
    """Reference `tokenizer_image_token` split: per-piece ids (BOS only on the first) and char offsets.

    Returns a list of `(ids, offsets)` per piece, offsets as global
    `[start, end)` character positions in `prompt` (None without offsets).
    """
    pieces = prompt.split(IMAGE_TOKEN)
    slow = sentencepiece_tokens.for_tokenizer(tokenizer)
    encoded = []
    start = 0
    for piece in pieces:
        if slow is not None:
            ids, local = slow.encode(piece)
        else:
            enc = tokenizer(piece, return_offsets_mapping=with_offsets)
            ids, local = list(enc["input_ids"]), (enc["offset_mapping"] if with_offsets else None)
        offsets = [(start + s, start + e) for s, e in local] if with_offsets else None
        encoded.append((ids, offsets))
        start += len(piece) + len(IMAGE_TOKEN)
    bos = tokenizer.bos_token_id
    # As the reference: when the tokenizer adds BOS, it is kept once, at the very start.
    strip = int(bool(encoded and encoded[0][0] and bos is not None and encoded[0][0][0] == bos))
    out = []
    for k, (ids, offsets) in enumerate(encoded):
        if strip and k > 0:
            ids, offsets = ids[1:], (offsets[1:] if offsets is not None else None)
        out.append((ids, offsets))
    return out


def tokenizer_image_token(prompt: str, tokenizer, *, image_token_index: int, image_seq_length: int = 1) -> list[int]:
    """Token ids of `prompt` with `image_seq_length` placeholder ids per `<image>` (reference semantics).

    With `image_seq_length=1` this is the LLaVA repo's `tokenizer_image_token`.
    Returns a list of `len = text tokens + image_seq_length * num_images` ints.
    """
    out: list[int] = []
    for k, (ids, _) in enumerate(_split_tokenize(prompt, tokenizer, with_offsets=False)):
        if k:
            out.extend([image_token_index] * image_seq_length)
        out.extend(ids)
    return out


def _check_text(sample_id: str, value: Any) -> str:
    if not isinstance(value, str):
        raise DataError(
            sample_id,
            "malformed",
            f"turn value is {type(value).__name__}, not a string",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(sample_id, "non_utf8", str(e)) from None
    return value


def validate_turns(example: dict, template) -> tuple[str, list[tuple[str, str]], bool]:
    """Checks a raw LLaVA example; returns `(id, turns, has_image)` with `<image>` placed as in training.

    Raises `DataError` for every bad-input case of the data issue.
    """
    if not isinstance(example, dict):
        raise DataError("?", "malformed", f"example is {type(example).__name__}, not a dict")
    sample_id = str(example.get("id", "?"))
    if example.get("_error"):
        raise DataError(sample_id, example.get("_reason", "malformed"), example["_error"])
    conversations = example.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise DataError(sample_id, "no_conversations")
    turns = []
    for turn in conversations:
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(sample_id, "malformed", "a turn lacks 'from' or 'value'")
        turns.append((str(turn["from"]), _check_text(sample_id, turn["value"])))
    # The reference drops a leading assistant turn ("Skip the first one if it is not from human").
    if turns and turns[0][0] == "gpt":
        turns = turns[1:]
    speakers = [role for role, _ in turns]
    expected = ["human", "gpt"] * (len(turns) // 2)
    if not turns or len(turns) % 2 or speakers != expected:
        raise DataError(
            sample_id,
            "not_alternating",
            "turns must be human/gpt pairs, ending with gpt",
        )
    for role, value in turns:
        if not value.strip():
            raise DataError(
                sample_id,
                "empty_turn",
                f"empty {'answer' if role == 'gpt' else 'question'}",
            )
    has_image = example.get("image") is not None
    markers = sum(value.count(IMAGE_TOKEN) for _, value in turns)
    if markers and not has_image:
        raise DataError(sample_id, "image_token_in_text_only")
    if has_image and markers == 0:
        raise DataError(sample_id, "missing_image_token")
    # Checked before the count: a marker in an answer is the fault to name, even beside the question's.
    if any(IMAGE_TOKEN in value for role, value in turns if role == "gpt"):
        raise DataError(sample_id, "image_token_in_answer", f"an answer contains {IMAGE_TOKEN}")
    if markers > 1:
        raise DataError(sample_id, "multiple_image_tokens", f"{markers} markers for one image")
    if has_image:
        # Reference `preprocess_multimodal`: the marker goes to the front of its turn.
        turns = [(role, move_image_to_front(v, training=True) if IMAGE_TOKEN in v else v) for role, v in turns]
    return sample_id, turns, has_image


def encode_example(
    example: dict,
    tokenizer,
    *,
    template,
    image_seq_length: int,
    max_length: int,
    image_token_index: int,
) -> dict:
    """A raw LLaVA example -> token ids, labels and its image reference.

    Args:
      example: `{"id", "image" (optional reference: path or bytes), "conversations":
        [{"from": "human"|"gpt", "value"}, ...]}`.
      tokenizer: an HF tokenizer (`AutoTokenizer.from_pretrained`): a LLaMA tokenizer
        with its `tokenizer.model` (tokenized as LLaVA's slow tokenizer did), or a fast one.
      template: `vicuna_v1`, `llava_v1`, `plain` or `llava_hf` (name or `Template`).
      image_seq_length: placeholder ids per image (576 for CLIP-L/14-336).
      max_length: longest sequence kept; longer ones are truncated unless the
        cut would go through (or past) the image's placeholders.
      image_token_index: the placeholder id (the model config's image token index).
    Returns:
      `{"id": str, "input_ids": int32[T], "labels": int32[T] (-100 where not
      supervised), "image": the example's image reference or None}`.
    Raises:
      DataError: the sample cannot be used (see `REASONS`).
    """
    template = get_template(template)
    sample_id, turns, has_image = validate_turns(example, template)
    if template.style == "plain" and not has_image:
        raise DataError(sample_id, "no_image", "the plain template needs an image sample")
    try:
        segments = training_segments(template, turns)
    except ValueError as e:
        raise DataError(sample_id, "not_alternating", str(e)) from None
    text = "".join(piece for piece, _ in segments)
    ranges, pos = [], 0
    for piece, supervised in segments:
        if supervised:
            ranges.append((pos, pos + len(piece)))
        pos += len(piece)
    boundaries = sorted({b for r in ranges for b in r})

    ids: list[int] = []
    labels: list[int] = []
    blocks: list[tuple[int, int]] = []
    try:
        pieces = _split_tokenize(text, tokenizer, with_offsets=True)
    except NotImplementedError:
        raise TypeError(
            "encode_example needs a fast (tokenizers-backed) tokenizer for offsets, or a LLaMA tokenizer "
            "loaded from a directory with its tokenizer.model"
        ) from None
    for k, (piece_ids, offsets) in enumerate(pieces):
        if k:
            blocks.append((len(ids), len(ids) + image_seq_length))
            ids.extend([image_token_index] * image_seq_length)
            labels.extend([IGNORE_INDEX] * image_seq_length)
        for token, (s, e) in zip(piece_ids, offsets):
            if s < e and any(s < b < e for b in boundaries):
                raise DataError(
                    sample_id,
                    "tokenization_mismatch",
                    f"token {token} spans characters {s}:{e} across a reply boundary",
                )
            if s < e:
                supervised = any(lo <= s and e <= hi for lo, hi in ranges)
            else:
                # A zero-width token (sentencepiece's dummy prefix, the first byte of a
                # byte-fallback character) belongs to the text that follows it.
                supervised = any(lo <= s < hi for lo, hi in ranges)
            ids.append(token)
            labels.append(token if supervised else IGNORE_INDEX)
    if len(ids) > max_length:
        if any(end > max_length for _, end in blocks):
            raise DataError(
                sample_id,
                "image_cut_by_truncation",
                f"{len(ids)} tokens, image placeholders end at {max(e for _, e in blocks)}",
            )
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        raise DataError(sample_id, "no_supervised_tokens")
    return {
        "id": sample_id,
        "input_ids": np.asarray(ids, np.int32),
        "labels": np.asarray(labels, np.int32),
        "image": example.get("image") if has_image else None,
    }


def is_skip(element: dict) -> bool:
    """Whether an element is the marker of a dropped sample (`{"id", "_skip": reason}`)."""
    return "_skip" in element


def skip_marker(error: DataError) -> dict:
    """The element standing for a dropped sample, so counts travel with the data through workers."""
    return {"id": error.sample_id, "_skip": error.reason}


class EncodeFn:
    """Raw example -> encoded sample, or a skip marker (or `DataError` in strict mode).

    Also rejects image references that are certainly unreadable (missing or
    empty file, not a regular file, above `config.max_image_bytes`, empty bytes)
    before packing, so packed rows rarely need blanking. With `config.anyres`
    the image's header is read (after those checks) for its placeholder count
    and the output carries `image_hw` int32[2].
    """

    def __init__(self, tokenizer, config):
        # `config`: anything with the `DataConfig` fields used below.
        self.tokenizer, self.config = tokenizer, config

    def __call__(self, example: dict) -> dict:
        c = self.config
        max_bytes = getattr(c, "max_image_bytes", DEFAULT_MAX_IMAGE_BYTES)
        try:
            per_image, hw = c.image_seq_length, None
            anyres = getattr(c, "anyres", None)
            if anyres is not None and isinstance(example, dict) and example.get("image") is not None:
                if not example.get("_error"):
                    # An anyres image's placeholder count depends on its size: read it from the header.
                    _check_image_ref(str(example.get("id", "?")), example["image"], max_bytes)
                    hw = _image_hw(str(example.get("id", "?")), example["image"])
                    per_image = anyres.num_tokens(*hw)
            out = encode_example(
                example,
                self.tokenizer,
                template=c.template,
                image_seq_length=per_image,
                max_length=c.max_length,
                image_token_index=c.image_token_index,
            )
            _check_image_ref(out["id"], out["image"], max_bytes)
            if hw is not None:
                out["image_hw"] = np.asarray(hw, np.int32)
        except DataError as error:
            if c.on_error == "strict":
                raise
            log.warning("skipping %s", error)
            return skip_marker(error)
        return out


def _image_hw(sample_id: str, ref) -> tuple[int, int]:
    """(height, width) of a sample's image from its header, or `DataError` (missing / corrupt)."""
    try:
        return image_hw(ref)
    except FileNotFoundError as e:
        raise DataError(sample_id, "missing_image", str(e)) from None
    except Exception as e:  # PIL: UnidentifiedImageError / OSError / ValueError for bad data
        raise DataError(sample_id, "corrupt_image", f"{type(e).__name__}: {e}") from None


def _check_image_ref(sample_id: str, ref, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> None:
    if ref is None:
        return
    if isinstance(ref, (str, os.PathLike)):
        try:
            check_image_file(os.fspath(ref), max_bytes)
        except ImageFileError as e:
            raise DataError(sample_id, e.reason, str(e)) from None
    elif isinstance(ref, (bytes, bytearray, memoryview)) and len(ref) == 0:
        raise DataError(sample_id, "corrupt_image", "empty image bytes")
