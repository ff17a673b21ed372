"""Random-access sources of raw LLaVA examples: the JSON/JSONL format and packed ArrayRecord shards.

Every source is a grain `RandomAccessDataSource` (`__len__`, `__getitem__`)
returning raw examples `{"id", "conversations", "image"}` where `image` is a
reference the pipeline decodes later: an absolute file path (JSON), the
encoded image bytes (ArrayRecord, TFDS) or None (text-only). A record that
cannot even be read (e.g. invalid UTF-8) comes back as
`{"id", "_error", "_reason"}`, so one bad record never stops a run: the
encoder turns it into a counted, logged skip (or an error in strict mode).
So does an image reference that leaves the image root (`llava_jax.data.paths`).

`modality_lengths()` gives the reference's grouping key per example: the word
count of its conversation, positive for image samples, negative for text-only.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from llava_jax.data.paths import ImageFileError, ImageRoot

MAGIC = b"LLJ1"
_ID_RE = re.compile(r'"id"\s*:\s*"([^"]*)"')


def word_length(example: Any) -> int:
    """Signed word count as the reference's `modality_lengths` (+ image samples, - text-only)."""
    if not isinstance(example, dict):
        return 0
    words = 0
    for turn in example.get("conversations") or []:
        if isinstance(turn, dict) and isinstance(turn.get("value"), str):
            words += len(turn["value"].split())
    # Nonzero even for empty conversations, so the sign still carries the modality.
    words = max(words, 1)
    return words if example.get("image") is not None else -words


def _error_record(index: int, raw: bytes, reason: str, detail: str) -> dict:
    match = _ID_RE.search(raw.decode("latin-1"))
    return {
        "id": match.group(1) if match else f"#{index}",
        "_error": detail,
        "_reason": reason,
    }


class JsonSource:
    """LLaVA's JSON (a list of examples) or JSONL file, read lazily with random access.

    Construction scans the file once to record each example's byte span and
    grouping length; examples are parsed only when read, so neither the JSON
    objects nor any image is held in memory, and the source pickles cheaply
    into grain workers (path + offset arrays).

    Args:
      path: `.json` (a list) or `.jsonl` (one example per line).
      image_root: folder that the examples' `image` paths are relative to
        (default: the JSON file's folder).
      allow_outside_root: accept image paths outside `image_root` (absolute, `..`,
        symlinks leading out); by default such an example is an error record
        (reason `image_outside_root`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        image_root: str | os.PathLike | None = None,
        *,
        allow_outside_root: bool = False,
    ):
        self.path = os.fspath(path)
        self.image_root = os.fspath(image_root) if image_root is not None else os.path.dirname(self.path)
        self._root = ImageRoot(self.image_root, allow_outside_root=allow_outside_root)
        with open(self.path, "rb") as f:
            data = f.read()
        # latin-1 maps each byte to one character, so character offsets are byte
        # offsets and invalid UTF-8 inside one record cannot break the scan.
        text = data.decode("latin-1")
        spans, lengths = [], []
        for start, end, obj in _scan_records(text, self.path):
            spans.append((start, end))
            lengths.append(word_length(obj))
        self._spans = np.asarray(spans, np.int64).reshape(-1, 2)
        self._lengths = np.asarray(lengths, np.int32)
        self._fd = None

    def __len__(self) -> int:
        return len(self._spans)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"] = None  # file descriptors do not cross process boundaries
        return state

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def _read(self, index: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        start, end = self._spans[index]
        return os.pread(self._fd, int(end - start), int(start))

    def __getitem__(self, index: int) -> dict:
        """Raw example `index` with `image` resolved against `image_root` (or an error record)."""
        index = int(index) % len(self)
        raw = self._read(index)
        try:
            example = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            return _error_record(index, raw, "non_utf8", str(e))
        except json.JSONDecodeError as e:
            return _error_record(index, raw, "malformed", str(e))
        if not isinstance(example, dict):
            return {
                "id": f"#{index}",
                "_error": "example is not a JSON object",
                "_reason": "malformed",
            }
        example.setdefault("id", f"#{index}")
        image = example.get("image")
        if image is not None:
            if not isinstance(image, str) or not image:
                return {
                    "id": str(example["id"]),
                    "_error": f"bad image field {image!r}",
                    "_reason": "malformed",
                }
            try:
                example["image"] = self._root.resolve(image)
            except ImageFileError as e:
                return {"id": str(example["id"]), "_error": str(e), "_reason": e.reason}
        return example

    def modality_lengths(self) -> np.ndarray:
        """int32[N]: signed word counts (+ image, - text-only), the reference's grouping key."""
        return self._lengths

    def __repr__(self) -> str:
        return f"JsonSource({self.path!r}, {len(self)} examples)"


def _scan_records(text: str, path: str) -> Iterator[tuple[int, int, Any]]:
    """Yields `(start, end, object)` for each example of a JSON list or JSONL text."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")
    pos = ws.match(text, 0).end()
    is_list = text.startswith("[", pos)
    if not is_list:
        # JSONL: one object per non-empty line.
        while pos < len(text):
            obj, end = _decode(decoder, text, pos, path)
            yield pos, end, obj
            pos = ws.match(text, end).end()
        return
    pos = ws.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return
    while True:
        obj, end = _decode(decoder, text, pos, path)
        yield pos, end, obj
        pos = ws.match(text, end).end()
        if text.startswith(",", pos):
            pos = ws.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            return
        else:
            raise ValueError(f"{path}: expected ',' or ']' at byte {pos}")


def _decode(decoder: json.JSONDecoder, text: str, pos: int, path: str):
    try:
        return decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at byte {e.pos}: {e.msg}") from None
    except RecursionError:
        raise ValueError(f"{path}: the JSON value at byte {pos} is nested too deeply to read") from None


def serialize_record(example: dict, image_bytes: bytes | None) -> bytes:
    """One packed record: `MAGIC`, uint32 length of a UTF-8 JSON header, the header, the image bytes.

    The header holds `id`, `conversations`, the original `image` path and
    `has_image`; the encoded image follows unchanged (no re-encoding).
    """
    header = {
        "id": example.get("id"),
        "conversations": example.get("conversations"),
        "image": example.get("image"),
        "has_image": image_bytes is not None,
    }
    for key, value in example.items():
        if key not in header and not key.startswith("_"):
            header[key] = value
    blob = json.dumps(header, ensure_ascii=False).encode("utf-8")
    return MAGIC + struct.pack("<I", len(blob)) + blob + (image_bytes or b"")


def deserialize_record(record: bytes, index: int = -1) -> dict:
    """Inverse of `serialize_record`: a raw example whose `image` is the encoded bytes (or None)."""
    record = bytes(record)
    if record[:4] != MAGIC:
        return {
            "id": f"#{index}",
            "_error": "not a llava_jax record",
            "_reason": "malformed",
        }
    (size,) = struct.unpack("<I", record[4:8])
    try:
        header = json.loads(record[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return {"id": f"#{index}", "_error": str(e), "_reason": "malformed"}
    example = {k: v for k, v in header.items() if k != "has_image"}
    example["image"] = record[8 + size :] if header.get("has_image") else None
    return example


class ArrayRecordSource:
    """The shards written by `llava-jax data pack`: records with the encoded image bytes inside.

    Args:
      directory: the pack output folder (`*.array_record`, `lengths.npy`, `metadata.json`).
    """

    def __init__(self, directory: str | os.PathLike):
        import grain

        self.directory = os.fspath(directory)
        paths = sorted(
            os.path.join(self.directory, name) for name in os.listdir(self.directory) if name.endswith(".array_record")
        )
        if not paths:
            raise FileNotFoundError(f"no .array_record shards in {self.directory}")
        self._source = grain.sources.ArrayRecordDataSource(paths)
        lengths_path = os.path.join(self.directory, "lengths.npy")
        self._lengths = np.load(lengths_path) if os.path.exists(lengths_path) else None
        if self._lengths is not None and len(self._lengths) != len(self._source):
            raise ValueError(
                f"{self.directory}: {len(self._source)} records but lengths.npy describes {len(self._lengths)}: "
                f"shards of different packs are mixed there; re-pack into an empty folder (or with --overwrite)"
            )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        index = int(index) % len(self)
        return deserialize_record(self._source[index], index)

    def modality_lengths(self) -> np.ndarray:
        """int32[N]: signed word counts stored at pack time (computed by reading records if absent)."""
        if self._lengths is None:
            self._lengths = compute_modality_lengths(self)
        return self._lengths

    def __repr__(self) -> str:
        return f"ArrayRecordSource({self.directory!r}, {len(self)} examples)"


class MappedSource:
    """Any random-access source whose records `decode_fn` turns into raw LLaVA examples (e.g. TFDS)."""

    def __init__(self, source: Sequence, decode_fn, lengths: np.ndarray | None = None):
        self._source = source
        self._decode_fn = decode_fn
        self._lengths = lengths

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        index = int(index) % len(self)
        return self._decode_fn(self._source[index], index)

    def modality_lengths(self) -> np.ndarray:
        if self._lengths is None:
            self._lengths = compute_modality_lengths(self)
        return self._lengths


def compute_modality_lengths(source: Sequence) -> np.ndarray:
    """int32[N] grouping keys by reading every record (slow for big sources; pack stores them)."""
    return np.asarray([word_length(source[i]) for i in range(len(source))], np.int32)


def open_source(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, *, allow_outside_root: bool = False
):
    """A source from a path: a pack folder (ArrayRecord) or a LLaVA `.json` / `.jsonl` file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return ArrayRecordSource(path)
    return JsonSource(path, image_root, allow_outside_root=allow_outside_root)
