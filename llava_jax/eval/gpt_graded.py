"""LLaVA-Bench (in-the-wild) and MM-Vet: answer files for their GPT-4 graders.

Both are open-ended and graded by GPT-4, which this package never calls. The
run produces exactly what the graders read: for LLaVA-Bench the answer JSONL
that `llava/eval/eval_gpt_review_bench.py --answer-list` takes (the run's own
answer file, copied under a stable name); for MM-Vet the `{"v1_<id>": answer}`
JSON of `scripts/convert_mmvet_for_eval.py` that MM-Vet's grader notebook reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from llava_jax.eval.common import DataConfig, Score, answered, llava_jsonl_items
from llava_jax.eval.records import Item, write_json

LLAVA_BENCH_QUESTIONS = "questions.jsonl"
LLAVA_BENCH_IMAGES = "images"
MMVET_QUESTIONS = "llava-mm-vet.jsonl"
MMVET_IMAGES = "images"


def load_llava_bench(cfg: DataConfig) -> list[Item]:
    """LLaVA-Bench in-the-wild questions (`llavabench.sh`, plain questions, no suffix)."""
    return llava_jsonl_items(cfg.questions(LLAVA_BENCH_QUESTIONS), cfg.images(LLAVA_BENCH_IMAGES), cfg)


def load_mmvet(cfg: DataConfig) -> list[Item]:
    """MM-Vet questions (`mmvet.sh`)."""
    return llava_jsonl_items(cfg.questions(MMVET_QUESTIONS), cfg.images(MMVET_IMAGES), cfg)


def score_llava_bench(items: Sequence[Item], answers: Mapping[str, dict], cfg: DataConfig, out_dir: str) -> Score:
    """Writes `llava_bench_answers.jsonl`, the grader's `--answer-list` entry."""
    path = os.path.join(out_dir, "llava_bench_answers.jsonl")
    records = [answers[item.key] for item in items if item.key in answers]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    notes = [
        (
            "graded offline by GPT-4: llava/eval/eval_gpt_review_bench.py --answer-list "
            "answers_gpt4.jsonl llava_bench_answers.jsonl, then summarize_gpt_review.py"
        )
    ]
    return Score({"answered": len(records)}, {"answers": path}, notes)


def score_mmvet(items: Sequence[Item], answers: Mapping[str, dict], cfg: DataConfig, out_dir: str) -> Score:
    """Writes `mmvet_results.json` (`{"v1_<question_id>": answer}`, indented as the reference)."""
    pairs = answered(items, answers)
    path = os.path.join(out_dir, "mmvet_results.json")
    write_json(path, {f"v1_{item.question_id}": text for item, text in pairs}, indent=2)
    notes = ["graded offline by GPT-4 with MM-Vet's grader on mmvet_results.json"]
    return Score({"answered": len(pairs)}, {"results": path}, notes)
