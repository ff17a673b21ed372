"""The held-out split's scoring: exact match after normalisation, per type, beside chance.

Accuracies and chance levels are percentages (0-100), as in `llava_jax.eval`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from llava_jax.demo.synthetic.language import QUESTION_TYPES
from llava_jax.demo.synthetic.scene import COLORS, MAX_SHAPES, POSITIONS, SHAPES

# Best constant guess per type, exact for the generator's answer distribution.
CHANCE: dict[str, float] = {
    "color": 1.0 / len(COLORS),
    "shape": 1.0 / len(SHAPES),
    "count": 1.0 / MAX_SHAPES,
    "position": 1.0 / len(POSITIONS),
    "existence": 0.5,
}


def load_eval_items(path: str | os.PathLike) -> list[dict]:
    """The held-out questions of an `eval_questions.jsonl` file, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


_ARTICLES = frozenset(("a", "an", "the"))
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
        ]
    )
}


def normalize_answer(text: str) -> str:
    """Lower case, `</s>` and punctuation dropped, whitespace collapsed, articles dropped, number words as digits."""
    text = text.replace("</s>", " ").lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(_NUMBER_WORDS.get(w, w) for w in text.split() if w not in _ARTICLES)


def chance_levels(
    eval_items: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, float]:
    """Chance accuracy in percent per question type (best constant guess) and `overall`.

    `overall` weights the types by their counts in `eval_items` (equal weights
    when None).
    """
    out = {t: 100.0 * CHANCE[t] for t in QUESTION_TYPES}
    counts = {t: 1 for t in QUESTION_TYPES}
    if eval_items is not None:
        counts = {t: 0 for t in QUESTION_TYPES}
        for item in eval_items:
            counts[item["category"]] += 1
    total = sum(counts.values())
    out["overall"] = sum(out[t] * n for t, n in counts.items()) / total if total else 0.0
    return out


def score_synthetic(
    predictions: Mapping[Any, str] | Sequence[Mapping[str, Any]],
    eval_items: Sequence[Mapping[str, Any]],
) -> dict[str, dict[str, float] | int]:
    """Exact-match accuracy (percent) per question type and overall, with chance levels beside it.

    Args:
      predictions: `{question_id: answer text}`, or answer records
        (`{"question_id", "text", ...}`, LLaVA's answer-file lines); ids are
        compared as strings, so JSON round trips are harmless.
      eval_items: the held-out questions (`load_eval_items`).
    Returns:
      `{"accuracy": {type: %, "overall": %}, "chance": {type: %, "overall": %},
      "num_questions": {type: n, "overall": n}, "missing": n}` for the types
      present in `eval_items`; a missing prediction counts as wrong.
    """
    if isinstance(predictions, Mapping):
        answers = {str(k): v for k, v in predictions.items()}
    else:
        answers = {str(r["question_id"]): r["text"] for r in predictions}
    correct = {t: 0 for t in QUESTION_TYPES}
    total = {t: 0 for t in QUESTION_TYPES}
    missing = 0
    for item in eval_items:
        qtype = item["category"]
        total[qtype] += 1
        prediction = answers.get(str(item["question_id"]))
        if prediction is None:
            missing += 1
        elif normalize_answer(prediction) == normalize_answer(item["answer"]):
            correct[qtype] += 1
    present = [t for t in QUESTION_TYPES if total[t]]
    n = sum(total.values())
    accuracy = {t: 100.0 * correct[t] / total[t] for t in present}
    accuracy["overall"] = 100.0 * sum(correct.values()) / n if n else 0.0
    chance = chance_levels(eval_items)
    return {
        "accuracy": accuracy,
        "chance": {t: chance[t] for t in [*present, "overall"]},
        "num_questions": {**{t: total[t] for t in present}, "overall": n},
        "missing": missing,
    }
