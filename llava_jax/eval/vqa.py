"""VQAv2, VizWiz and TextVQA: open-ended short answers with VQA soft accuracy.

VQAv2 and VizWiz are scored by their servers: the answers are normalised with
the EvalAI processor and written in the servers' upload formats
(`convert_vqav2_for_submission.py`, `convert_vizwiz_for_submission.py`). Where
ground truth is available locally (a validation annotation file) the standard
VQA accuracy is computed as well. TextVQA is scored locally on its validation
set as `eval_textvqa.py` does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from llava_jax.eval.common import (
    DataConfig,
    EvalDataError,
    Score,
    answered,
    llava_jsonl_items,
    percent,
    require,
)
from llava_jax.eval.normalize import normalize_answer, vqa_soft_score
from llava_jax.eval.records import Item, iter_jsonl, read_json, write_json

VQAV2_QUESTIONS = "llava_vqav2_mscoco_test-dev2015.jsonl"
VQAV2_ALL_TEST = "llava_vqav2_mscoco_test2015.jsonl"
VQAV2_IMAGES = "test2015"
VIZWIZ_QUESTIONS = "llava_test.jsonl"
VIZWIZ_IMAGES = "test"
TEXTVQA_QUESTIONS = "llava_textvqa_val_v051_ocr.jsonl"
TEXTVQA_IMAGES = "train_images"
TEXTVQA_ANNOTATIONS = "TextVQA_0.5.1_val.json"


def load_vqav2(cfg: DataConfig) -> list[Item]:
    """VQAv2 test-dev questions (`vqav2.sh`)."""
    return llava_jsonl_items(cfg.questions(VQAV2_QUESTIONS), cfg.images(VQAV2_IMAGES), cfg)


def load_vizwiz(cfg: DataConfig) -> list[Item]:
    """VizWiz test questions (`vizwiz.sh`); the file's text carries the unanswerable hint."""
    return llava_jsonl_items(cfg.questions(VIZWIZ_QUESTIONS), cfg.images(VIZWIZ_IMAGES), cfg)


def load_textvqa(cfg: DataConfig) -> list[Item]:
    """TextVQA validation questions with reference OCR tokens (`textvqa.sh`)."""
    return llava_jsonl_items(cfg.questions(TEXTVQA_QUESTIONS), cfg.images(TEXTVQA_IMAGES), cfg)


def _gt_answers(entry: Mapping) -> list[str]:
    # VQA / VizWiz annotations hold dicts with an "answer"; TextVQA plain strings.
    return [a["answer"] if isinstance(a, Mapping) else a for a in entry["answers"]]


def _local_accuracy(pairs: Sequence[tuple[Item, str]], truth: Mapping, key_of) -> dict:
    scores = []
    for item, text in pairs:
        entry = truth.get(key_of(item))
        if entry is not None:
            scores.append(vqa_soft_score(text, _gt_answers(entry)))
    if not scores:
        return {}
    return {"accuracy": percent(sum(scores), len(scores)), "scored": len(scores)}


def _vqav2_truth(cfg: DataConfig) -> dict:
    """question_id -> annotation from a VQA-format annotation file, if one is given."""
    if not cfg.annotation_file:
        return {}
    data = read_json(require(cfg.annotations(""), "VQA annotation file"))
    entries = data["annotations"] if isinstance(data, Mapping) else data
    return {entry["question_id"]: entry for entry in entries}


def score_vqav2(items: Sequence[Item], answers: Mapping[str, dict], cfg: DataConfig, out_dir: str) -> Score:
    """The test-dev upload file; VQA accuracy too when `--annotation-file` gives ground truth.

    Following the reference, the upload covers every test2015 question when
    `llava_vqav2_mscoco_test2015.jsonl` is present (unanswered ones get "").
    """
    pairs = answered(items, answers)
    by_qid = {item.question_id: normalize_answer(text) for item, text in pairs}
    full_list = cfg.path(None, VQAV2_ALL_TEST)
    if os.path.exists(full_list):
        qids = [rec["question_id"] for rec in iter_jsonl(full_list)]
    else:
        qids = list(by_qid)
    upload = [{"question_id": q, "answer": by_qid.get(q, "")} for q in qids]
    path = os.path.join(out_dir, "vqav2_test-dev2015_upload.json")
    write_json(path, upload)
    metrics = {"answered": len(pairs), "upload_entries": len(upload)}
    truth = _vqav2_truth(cfg)
    if not truth:  # answers carried in the question file itself (e.g. a val split)
        truth = {it.question_id: it.meta["record"] for it, _ in pairs if "answers" in it.meta["record"]}
    metrics.update(_local_accuracy(pairs, truth, lambda it: it.question_id))
    notes = ["score: upload vqav2_test-dev2015_upload.json to the EvalAI VQAv2 server"]
    return Score(metrics, {"upload": path}, notes)


def score_vizwiz(items: Sequence[Item], answers: Mapping[str, dict], cfg: DataConfig, out_dir: str) -> Score:
    """The VizWiz upload file (`image`, normalised `answer`); VQA accuracy with a val annotation."""
    pairs = answered(items, answers)
    upload = [{"image": item.meta["record"]["image"], "answer": normalize_answer(text)} for item, text in pairs]
    path = os.path.join(out_dir, "vizwiz_test_upload.json")
    write_json(path, upload)
    metrics = {"answered": len(pairs)}
    if cfg.annotation_file:
        entries = read_json(require(cfg.annotations(""), "VizWiz annotation file"))
        truth = {entry["image"]: entry for entry in entries if entry.get("answers")}
        metrics.update(_local_accuracy(pairs, truth, lambda it: it.meta["record"]["image"]))
    notes = ["score: upload vizwiz_test_upload.json to the EvalAI VizWiz server"]
    return Score(metrics, {"upload": path}, notes)


def textvqa_question(prompt: str) -> str:
    """The lower-cased question inside a TextVQA prompt (reference `prompt_processor`)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if match is None:
            raise EvalDataError(f"unrecognised TextVQA prompt: {prompt!r}")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise EvalDataError(f"unrecognised TextVQA prompt: {prompt!r}")
    return question.lower()


def score_textvqa(items: Sequence[Item], answers: Mapping[str, dict], cfg: DataConfig, out_dir: str) -> Score:
    """Soft VQA accuracy on TextVQA val.

    As in `eval_textvqa.py`, an answer is matched to its annotation by
    (`question_id`, which LLaVA's file sets to the image id, and the question
    recovered from the prompt, lower-cased).
    """
    data = read_json(require(cfg.annotations(TEXTVQA_ANNOTATIONS), "TextVQA annotation file"))
    truth = {(a["image_id"], a["question"].lower()): a for a in data["data"]}
    pairs = answered(items, answers)
    missing = [it.question_id for it, _ in pairs if (it.question_id, textvqa_question(it.prompt)) not in truth]
    if missing:
        raise EvalDataError(f"{len(missing)} TextVQA answers have no annotation, e.g. {missing[:3]}")
    metrics = _local_accuracy(pairs, truth, lambda it: (it.question_id, textvqa_question(it.prompt)))
    return Score({"answered": len(pairs), **metrics})
