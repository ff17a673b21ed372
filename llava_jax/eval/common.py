"""What every benchmark module shares: where its files are and what a score looks like."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from llava_jax.data.paths import ImageFileError
from llava_jax.eval import prompts
from llava_jax.eval.records import FileImage, Item, file_image, iter_jsonl


class EvalDataError(ValueError):
    """Benchmark files missing, malformed or not matching each other."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where a benchmark's files are.

    data_dir: the benchmark's folder in the LLaVA layout (`playground/data/eval/<name>`).
    question_file / image_folder / annotation_file: overrides of the defaults,
        absolute or relative to `data_dir`.
    limit: keep only the first N questions (N rows for MMBench).
    lang: MMBench prompt language (`en` / `cn`).
    all_rounds: MMBench: ask every rotation of the options (reference `--all-rounds`).
    allow_outside_root: read image references leading outside their image folder
        (absolute, `..`, symbolic links); refused by default (`llava_jax.data.paths`).
    """

    data_dir: str
    question_file: str | None = None
    image_folder: str | None = None
    annotation_file: str | None = None
    limit: int | None = None
    lang: str = "en"
    all_rounds: bool = False
    allow_outside_root: bool = False

    def path(self, override: str | None, default: str) -> str:
        """`override` if given, else `default`; relative paths are under `data_dir`."""
        chosen = override if override else default
        return chosen if os.path.isabs(chosen) else os.path.join(self.data_dir, chosen)

    def questions(self, default: str) -> str:
        """The question file."""
        return self.path(self.question_file, default)

    def images(self, default: str) -> str:
        """The image folder."""
        return self.path(self.image_folder, default)

    def annotations(self, default: str) -> str:
        """The ground-truth file (or folder)."""
        return self.path(self.annotation_file, default)

    def image(self, folder: str, ref: str, question, *, convert_rgb: bool = True) -> FileImage:
        """Image `ref` of `folder` for question `question`; `EvalDataError` naming it if `ref` leaves the folder."""
        try:
            return file_image(folder, ref, convert_rgb=convert_rgb, allow_outside_root=self.allow_outside_root)
        except ImageFileError as e:
            raise EvalDataError(f"question {question!r}: {e}") from None


@dataclasses.dataclass
class Score:
    """A benchmark's figures (accuracies in percent), the files written for
    external graders / servers, and notes for the reader."""

    metrics: dict[str, Any]
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


def require(path: str, what: str) -> str:
    """`path`, or a clear error naming what it should hold."""
    if not os.path.exists(path):
        raise EvalDataError(f"{what} not found: {path}")
    return path


def limited(records: Sequence, limit: int | None) -> Sequence:
    """The first `limit` records (all when limit is None)."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return records if limit is None else records[:limit]


def answered(items: Sequence[Item], answers: Mapping[str, dict]) -> list[tuple[Item, str]]:
    """(item, answer text) for the items that have an answer, in item order."""
    return [(item, answers[item.key]["text"]) for item in items if item.key in answers]


def percent(numerator: float, denominator: float) -> float:
    """100 * numerator / denominator, 0 for an empty denominator."""
    return 100.0 * numerator / denominator if denominator else 0.0


def llava_jsonl_items(question_file: str, image_folder: str, cfg: DataConfig) -> list[Item]:
    """Items of a LLaVA question file (`question_id`, `image`, `text` per line).

    This is what `model_vqa_loader.py` / `model_vqa.py` do: the message is the
    image marker, a newline and `text`; the recorded prompt is `text`; the
    image is converted to RGB. Keys are line positions, so `--limit` runs and
    their resumption agree; the full record is kept in `meta["record"]`.
    `cfg` gives the limit and whether images may lie outside `image_folder`.
    """
    records = list(iter_jsonl(require(question_file, "question file")))
    items = []
    for i, rec in enumerate(limited(records, cfg.limit)):
        image = rec.get("image")
        items.append(
            Item(
                key=str(i),
                question_id=rec["question_id"],
                message=prompts.with_image(rec["text"]) if image else rec["text"],
                prompt=rec["text"],
                image=cfg.image(image_folder, image, rec["question_id"]) if image else None,
                meta={"record": rec},
            )
        )
    return items
