"""SEED-Bench: multiple-choice accuracy per evaluation dimension and overall.

Questions come from LLaVA's `llava-seed-bench.jsonl` (image questions and,
for video ones, the middle frame LLaVA extracts); answers and dimensions from
SEED's `SEED-Bench.json`. As in `convert_seed_for_submission.py` a reply is
right only if it equals the answer letter exactly. Without LLaVA's file the
image questions are built from `SEED-Bench.json` (the video frames need
LLaVA's extraction script, so video questions are then left out).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from llava_jax.eval import prompts
from llava_jax.eval.common import (
    DataConfig,
    EvalDataError,
    Score,
    limited,
    llava_jsonl_items,
    percent,
    require,
)
from llava_jax.eval.records import Item, read_json

QUESTIONS = "llava-seed-bench.jsonl"
IMAGES = "."
ANNOTATIONS = "SEED-Bench.json"
IMAGE_FOLDER = "SEED-Bench-image"
_CHOICES = ("choice_a", "choice_b", "choice_c", "choice_d")


def _annotations(cfg: DataConfig) -> dict:
    return read_json(require(cfg.annotations(ANNOTATIONS), "SEED-Bench annotation file"))


def load(cfg: DataConfig) -> list[Item]:
    """SEED-Bench questions (image folder = the benchmark folder, as in `seed.sh`)."""
    path = cfg.questions(QUESTIONS)
    images = cfg.images(IMAGES)
    if os.path.exists(path):
        return llava_jsonl_items(path, images, cfg)
    data = _annotations(cfg)
    names = {v: k for k, v in data["question_type"].items()}
    records = [q for q in data["questions"] if q.get("data_type", "image") == "image"]
    if not records:
        raise EvalDataError(f"no image questions in {cfg.annotations(ANNOTATIONS)}")
    items = []
    for i, q in enumerate(limited(records, cfg.limit)):
        text = prompts.multiple_choice(q["question"], [q[c] for c in _CHOICES])
        image = f"{IMAGE_FOLDER}/{q['data_id']}"
        record = {
            "image": image,
            "text": text,
            "category": names.get(q["question_type_id"]),
            "question_id": q["question_id"],
        }
        items.append(
            Item(
                key=str(i),
                question_id=q["question_id"],
                message=prompts.with_image(text),
                prompt=text,
                image=cfg.image(images, image, q["question_id"]),
                meta={"record": record},
            )
        )
    return items


def score(items: Sequence[Item], answers: Mapping[str, dict], cfg: DataConfig, out_dir: str) -> Score:
    """`accuracy` over every loaded question, `image_accuracy` / `video_accuracy`, `dimension/<name>`;
    writes the leaderboard upload (`question_id`, `prediction`) of the answered ones.

    As `convert_seed_for_submission.py` (and the paper), a question without an
    answer counts as wrong: every figure is over the whole split (the loaded
    questions, all of them unless `limit` is set); `accuracy_answered` is over the
    answered questions only.
    """
    data = _annotations(cfg)
    names = {v: k for k, v in data["question_type"].items()}
    truth = {str(q["question_id"]): q for q in data["questions"]}
    by_dimension: dict[str, list[bool]] = {}
    by_type: dict[str, list[bool]] = {}
    answered_hits: list[bool] = []
    upload_lines = []
    for item in items:
        q = truth.get(str(item.question_id))
        if q is None:
            raise EvalDataError(f"SEED-Bench question {item.question_id} not in the annotation file")
        text = answers[item.key]["text"] if item.key in answers else None
        hit = text is not None and text == q["answer"]
        by_dimension.setdefault(names.get(q["question_type_id"], str(q["question_type_id"])), []).append(hit)
        by_type.setdefault(q.get("data_type", "image"), []).append(hit)
        if text is not None:
            answered_hits.append(hit)
            upload_lines.append({"question_id": q["question_id"], "prediction": text})
    hits = [h for flags in by_type.values() for h in flags]
    metrics: dict = {
        "accuracy": percent(sum(hits), len(hits)),
        "accuracy_answered": percent(sum(answered_hits), len(answered_hits)),
        "answered": len(answered_hits),
        "questions": len(hits),
    }
    for data_type, flags in sorted(by_type.items()):
        metrics[f"{data_type}_accuracy"] = percent(sum(flags), len(flags))
    for name, flags in sorted(by_dimension.items()):
        metrics[f"dimension/{name}"] = percent(sum(flags), len(flags))
    notes = []
    if len(answered_hits) < len(hits):
        notes.append(
            f"{len(hits) - len(answered_hits)} of {len(hits)} questions unanswered: counted wrong in every figure "
            f"but accuracy_answered, and missing from the upload file"
        )
    path = os.path.join(out_dir, "seed_bench_upload.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in upload_lines)
    return Score(metrics, {"upload": path}, notes)
