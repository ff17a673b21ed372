"""Evaluation items, lazy image sources and the LLaVA answer-file format.

An `Item` is one model call: the user message, where its image comes from, the
fields LLaVA's `model_vqa*.py` scripts write for it and the ground truth the
scorer needs. Answer files are JSON lines in the reference layout
(`question_id`, `prompt`, `text`, `answer_id`, `model_id`, `metadata`) so that
LLaVA's own conversion and grading scripts read them unchanged; `metadata.key`
identifies the item for resuming.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from PIL import Image

from llava_jax.data.paths import DEFAULT_MAX_IMAGE_BYTES, ImageRoot, read_image_file

ImageSource = Callable[[], Image.Image]


@dataclasses.dataclass(frozen=True)
class FileImage:
    """An image file, opened when the batch that needs it is prepared.

    `convert_rgb` follows the reference script of each benchmark: most call
    `.convert('RGB')`, ScienceQA and MMBench hand the raw PIL image over.
    Only a regular file of at most `max_bytes` is read (`llava_jax.data.paths`);
    build one with `file_image` to also keep it inside its image folder.
    """

    path: str
    convert_rgb: bool = True
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    def __call__(self) -> Image.Image:
        image = Image.open(io.BytesIO(read_image_file(self.path, self.max_bytes)))
        if self.convert_rgb:
            return image.convert("RGB")
        image.load()
        return image


def file_image(folder: str, ref: str, *, convert_rgb: bool = True, allow_outside_root: bool = False) -> FileImage:
    """The `FileImage` of reference `ref` in image folder `folder`; `ImageFileError` if it leads outside
    the folder (absolute, `..`, symbolic links) unless `allow_outside_root` (`llava-jax eval --allow-outside-root`)."""
    root = ImageRoot(folder, allow_outside_root=allow_outside_root, hint="pass --allow-outside-root to allow it")
    return FileImage(root.resolve(ref), convert_rgb=convert_rgb)


@dataclasses.dataclass(frozen=True)
class Base64Image:
    """An image embedded as base64 (MMBench TSV rows)."""

    data: str = dataclasses.field(repr=False)

    def __call__(self) -> Image.Image:
        image = Image.open(io.BytesIO(base64.b64decode(self.data)))
        image.load()
        return image


@dataclasses.dataclass(frozen=True)
class Item:
    """One question as asked to the model.

    key: unique within a benchmark run; answers are matched and resumed by it.
    question_id: the answer file's `question_id`, as the reference writes it.
    message: the user turn, image marker included (`<image>\\n...`) when `image` is set.
    prompt: the answer file's `prompt` field (the reference's `cur_prompt`).
    image: where the image comes from, or None for a text-only question.
    fields: extra answer-file fields (MMBench `round_id`, `options`, ...).
    meta: ground truth and grouping information for the scorer; never written.
    """

    key: str
    question_id: Any
    message: str
    prompt: str
    image: ImageSource | None = None
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def answer_id(model_id: str, key: str) -> str:
    """A stable 22-character id (the reference draws a random shortuuid; stable ids keep
    a resumed run's file byte-identical to an uninterrupted one)."""
    return hashlib.sha1(f"{model_id}\0{key}".encode()).hexdigest()[:22]


def answer_record(item: Item, text: str, model_id: str) -> dict:
    """The answer-file line for `item` answered with `text`."""
    record = {"question_id": item.question_id, "prompt": item.prompt, "text": text}
    record.update(item.fields)
    record.update(
        answer_id=answer_id(model_id, item.key),
        model_id=model_id,
        metadata={"key": item.key},
    )
    return record


def model_name_from_path(path: str) -> str:
    """The reference's model id: the last path component, or `parent_checkpoint-N`."""
    parts = path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply to read") from None


def iter_jsonl(path: str) -> Iterator[dict]:
    """Records of a JSON-lines file, skipping blank lines; `ValueError` naming the file and line if one is bad."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield _loads(line, f"{path} line {number}")


def read_json(path: str) -> Any:
    """A JSON document; `ValueError` naming the file if it is not valid JSON."""
    with open(path, encoding="utf-8") as f:
        return _loads(f.read(), path)


def write_json(path: str, obj: Any, *, indent: int | None = None) -> None:
    """Write `obj` as JSON, creating parent folders."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)


def load_answers(path: str, *, repair: bool = False) -> dict[str, dict]:
    """Answer records of an answer file by `metadata.key` (later lines win).

    A run killed mid-write can leave a partial last line; with `repair` the file
    is truncated to its last complete line so that appending continues cleanly.
    Records without a key (files written by the reference scripts) are keyed by
    their `question_id`.
    """
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        data = f.read()
    good_end = 0
    answers: dict[str, dict] = {}
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            break
        good_end += len(line)
        if record is not None:
            key = (record.get("metadata") or {}).get("key", record.get("question_id"))
            answers[str(key)] = record
    if repair and good_end != len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return answers
