"""Writers and readers shared by the benchmark fixtures."""

from __future__ import annotations

import json
import os

from PIL import Image

SA = "Answer the question using a single word or phrase."
MC = "Answer with the option's letter from the given choices directly."


def write_image(path: str, color=(200, 30, 30), size=(20, 14)) -> None:
    """A solid-colour RGB image file (format from the extension)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)


def write_jsonl(path: str, records) -> None:
    """Records as JSON lines."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def write_json(path: str, obj) -> None:
    """One JSON document."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def read_json(path: str):
    """A JSON file's content."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str) -> list:
    """A JSON-lines file's records."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_text(path: str, mode: str = "r"):
    """A file's whole content (bytes with mode "rb")."""
    with open(path, mode) as f:
        return f.read()
