"""GQA testdev-balanced: exact-match accuracy.

The reference (`gqa.sh`) converts answers with `text.rstrip('.').lower()`
(`convert_gqa_for_eval.py`) and runs GQA's official `eval.py`, whose accuracy
is exact string equality with the gold answer over the balanced questions.
That figure is `accuracy`; `accuracy_normalized` also passes both sides
through the EvalAI processor, for reference only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from llava_jax.eval.common import (
    DataConfig,
    EvalDataError,
    Score,
    answered,
    llava_jsonl_items,
    percent,
)
from llava_jax.eval.normalize import normalize_answer
from llava_jax.eval.records import Item, read_json, write_json

QUESTIONS = "llava_gqa_testdev_balanced.jsonl"
IMAGES = "data/images"
# eval.py reads `{tier}_all_questions.json` upstream; LLaVA's patched copy and
# most users have the balanced file, so both are accepted.
ANNOTATION_CANDIDATES = (
    "data/testdev_balanced_questions.json",
    "testdev_balanced_questions.json",
    "data/testdev_all_questions.json",
    "testdev_all_questions.json",
)


def load(cfg: DataConfig) -> list[Item]:
    """GQA testdev-balanced questions."""
    return llava_jsonl_items(cfg.questions(QUESTIONS), cfg.images(IMAGES), cfg)


def prediction(text: str) -> str:
    """The reference's GQA prediction string."""
    return text.rstrip(".").lower()


def _ground_truth(cfg: DataConfig) -> dict[str, str]:
    if cfg.annotation_file:
        candidates = [cfg.annotations("")]
    else:
        candidates = [cfg.path(None, c) for c in ANNOTATION_CANDIDATES]
    for path in candidates:
        if os.path.exists(path):
            questions = read_json(path)
            return {str(qid): q["answer"] for qid, q in questions.items() if q.get("isBalanced", True)}
    raise EvalDataError(f"GQA questions with answers not found; looked for {candidates}")


def score(items: Sequence[Item], answers: Mapping[str, dict], cfg: DataConfig, out_dir: str) -> Score:
    """Accuracy on the answered balanced questions, plus the predictions file eval.py reads."""
    pairs = answered(items, answers)
    predictions = [{"questionId": item.question_id, "prediction": prediction(text)} for item, text in pairs]
    path = os.path.join(out_dir, "testdev_balanced_predictions.json")
    write_json(path, predictions)
    truth = _ground_truth(cfg)
    exact = normalized = scored = 0
    for item, text in pairs:
        gold = truth.get(str(item.question_id))
        if gold is None:
            continue
        scored += 1
        exact += prediction(text) == gold
        normalized += normalize_answer(text) == normalize_answer(gold)
    metrics = {
        "accuracy": percent(exact, scored),
        "accuracy_normalized": percent(normalized, scored),
        "answered": len(pairs),
        "scored": scored,
    }
    return Score(metrics, {"predictions": path})
