"""ScienceQA (test split): option accuracy, overall and on the image subset (SQA-IMG).

Questions come from LLaVA's `llava_test_CQM-A.json`, or are built from
ScienceQA's `problems.json` / `pid_splits.json` exactly as
`scripts/convert_sqa_to_llava.py` does when that file is absent. The prompt
follows `model_vqa_science.py --single-pred-prompt` and the scoring
`eval_science_qa.py`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from llava_jax.eval import prompts
from llava_jax.eval.common import (
    DataConfig,
    EvalDataError,
    Score,
    limited,
    percent,
)
from llava_jax.eval.records import Item, read_json, write_json

QUESTIONS = "llava_test_CQM-A.json"
IMAGES = "images/test"
PROBLEMS = "problems.json"
SPLITS = "pid_splits.json"
SPLIT = "test"
OPTIONS = ("A", "B", "C", "D", "E")

_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
_OPTION_IN_PROMPT = re.compile(r"\(([A-Z])\) ")


def build_questions(problems: Mapping[str, Mapping], split_ids: Sequence[str]) -> list[dict]:
    """LLaVA's `llava_{split}_CQM-A.json` records built from ScienceQA's files."""
    records = []
    for pid in split_ids:
        problem = problems[pid]
        text = prompts.scienceqa_cqm(problem)
        answer = f"The answer is {OPTIONS[problem['answer']]}."
        record = {"id": pid}
        if problem.get("image"):
            record["image"] = os.path.join(pid, problem["image"])
            text = f"{text}\n{prompts.IMAGE_TOKEN}"
        record["conversations"] = [
            {"from": "human", "value": text},
            {"from": "gpt", "value": answer},
        ]
        records.append(record)
    return records


def _question_records(cfg: DataConfig) -> list[dict]:
    path = cfg.questions(QUESTIONS)
    if os.path.exists(path):
        return read_json(path)
    problems_path, splits_path = cfg.path(None, PROBLEMS), cfg.path(None, SPLITS)
    if os.path.exists(problems_path) and os.path.exists(splits_path):
        return build_questions(read_json(problems_path), read_json(splits_path)[SPLIT])
    raise EvalDataError(f"ScienceQA questions not found: {path} (nor {problems_path} + {splits_path})")


def load(cfg: DataConfig) -> list[Item]:
    """ScienceQA test questions; text-only ones are asked without an image."""
    folder = cfg.images(IMAGES)
    items = []
    for rec in limited(_question_records(cfg), cfg.limit):
        text = rec["conversations"][0]["value"].replace(prompts.IMAGE_TOKEN, "").strip()
        image = None
        if "image" in rec:
            # The reference opens the file without converting it to RGB.
            image = cfg.image(folder, rec["image"], rec.get("id"), convert_rgb=False)
            text = prompts.with_image(text)
        text = f"{text}\n{prompts.MULTIPLE_CHOICE}"
        gpt = rec["conversations"][1]["value"] if len(rec["conversations"]) > 1 else ""
        items.append(
            Item(
                key=str(rec["id"]),
                question_id=rec["id"],
                message=text,
                prompt=text,
                image=image,
                meta={"gpt": gpt},
            )
        )
    return items


def parse_answer(text: str) -> str:
    """The option letter in a reply, or "FAILED" (`eval_science_qa.py` rules)."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _THE_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def _truth(items: Sequence[Item], cfg: DataConfig) -> dict[str, tuple[int, int]]:
    """pid -> (answer index, number of choices), from problems.json or the question file."""
    problems_path = cfg.annotations(PROBLEMS)
    if os.path.exists(problems_path):
        problems = read_json(problems_path)
        return {str(pid): (p["answer"], len(p["choices"])) for pid, p in problems.items()}
    truth = {}
    for item in items:
        found = _THE_ANSWER_IS.findall(item.meta.get("gpt", ""))
        if len(found) == 1:
            truth[item.key] = (
                OPTIONS.index(found[0]),
                len(_OPTION_IN_PROMPT.findall(item.prompt)),
            )
    return truth


def score(items: Sequence[Item], answers: Mapping[str, dict], cfg: DataConfig, out_dir: str) -> Score:
    """Accuracy and IMG accuracy over every loaded test problem; the reference's result file.

    As `eval_science_qa.py` (and the paper), a problem without an answer counts as
    wrong ("FAILED"): `accuracy` / `img_accuracy` are over the whole split (the
    loaded problems, all of them unless `limit` is set). `*_answered` are the same
    over the answered problems only. Unlike the reference, an unanswered image
    problem stays an image problem (the reference looks for `<image>` in the
    missing prediction's prompt, so it drops out of the IMG denominator).
    """
    truth = _truth(items, cfg)
    counts = dict.fromkeys(("correct", "total", "answered", "img_correct", "img_total", "img_answered"), 0)
    results, outputs = {}, {}
    for item in items:
        if item.key not in truth:
            raise EvalDataError(f"no ground truth for ScienceQA problem {item.key}")
        answer_index, n_choices = truth[item.key]
        text = answers[item.key]["text"] if item.key in answers else None
        letter = parse_answer(text) if text is not None else "FAILED"
        pred = OPTIONS.index(letter) if letter in OPTIONS[:n_choices] else -1
        results[item.key], outputs[item.key] = pred, (text if text is not None else "FAILED")
        hit = pred == answer_index
        is_img = prompts.IMAGE_TOKEN in item.prompt
        for prefix, counted in (("", True), ("img_", is_img)):
            if counted:
                counts[prefix + "total"] += 1
                counts[prefix + "correct"] += hit
                counts[prefix + "answered"] += text is not None
    metrics = {
        "accuracy": percent(counts["correct"], counts["total"]),
        "img_accuracy": percent(counts["img_correct"], counts["img_total"]),
        "accuracy_answered": percent(counts["correct"], counts["answered"]),
        "img_accuracy_answered": percent(counts["img_correct"], counts["img_answered"]),
        "correct": counts["correct"],
        "count": counts["total"],
        "img_count": counts["img_total"],
        "answered": counts["answered"],
        "img_answered": counts["img_answered"],
    }
    notes = []
    if counts["answered"] < counts["total"]:
        notes.append(
            f"{counts['total'] - counts['answered']} of {counts['total']} problems unanswered: counted wrong in "
            f"accuracy / img_accuracy (as the paper's script does); *_answered leave them out"
        )
    path = os.path.join(out_dir, "scienceqa_result.json")
    write_json(
        path,
        {
            "acc": metrics["accuracy"],
            "correct": counts["correct"],
            "count": counts["total"],
            "results": results,
            "outputs": outputs,
        },
        indent=2,
    )
    return Score(metrics, {"result": path}, notes)
