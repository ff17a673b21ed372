"""MME: per-subtask accuracy and accuracy+, perception and cognition totals.

Questions come from LLaVA's `llava_mme.jsonl` (question ids `category/image`),
ground truth from the benchmark's own `MME_Benchmark_release_version` folder
(`<category>/[questions_answers_YN/]<image>.txt`, `question<TAB>answer` lines),
matched as LLaVA's `convert_answer_to_mme.py` does. Scores follow MME's
`eval_tool/calculation.py`: a reply counts as yes/no by its first four
characters; accuracy+ is the share of images with both questions right; a
subtask scores 100 * (acc + acc+), and the totals are sums over subtasks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from llava_jax.eval import prompts
from llava_jax.eval.common import (
    DataConfig,
    EvalDataError,
    Score,
    answered,
    limited,
    llava_jsonl_items,
    percent,
)
from llava_jax.eval.records import Item

QUESTIONS = "llava_mme.jsonl"
RELEASE = "MME_Benchmark_release_version"

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)
_IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg")


def _category_dirs(release: str, category: str) -> tuple[str, str]:
    """(image folder, question folder) of a category; some subtasks nest them."""
    base = os.path.join(release, category)
    if os.path.isdir(os.path.join(base, "images")):
        return os.path.join(base, "images"), os.path.join(base, "questions_answers_YN")
    return base, base


def read_ground_truth(release: str) -> dict[tuple[str, str, str], str]:
    """(category, question file name, question) -> "Yes"/"No" from the MME release."""
    if not os.path.isdir(release):
        raise EvalDataError(f"MME release folder not found: {release}")
    truth = {}
    for category in sorted(os.listdir(release)):
        if not os.path.isdir(os.path.join(release, category)):
            continue
        _, qa_dir = _category_dirs(release, category)
        for name in sorted(os.listdir(qa_dir)):
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(qa_dir, name), encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        question, answer = line.strip().split("\t")
                        truth[(category, name, question)] = answer
    return truth


def _build_items(release: str, cfg: DataConfig) -> list[Item]:
    """Questions straight from the MME release when `llava_mme.jsonl` is absent."""
    records = []
    for category, name, question in read_ground_truth(release):
        image_dir, _ = _category_dirs(release, category)
        stem = name[: -len(".txt")]
        image = next(
            (stem + ext for ext in _IMAGE_EXTENSIONS if os.path.exists(os.path.join(image_dir, stem + ext))),
            None,
        )
        if image is None:
            raise EvalDataError(f"no image for MME question file {category}/{name}")
        rel_image = os.path.relpath(os.path.join(image_dir, image), release)
        records.append((f"{category}/{image}", rel_image, prompts.mme(question)))
    items = []
    for i, (qid, rel_image, text) in enumerate(limited(records, cfg.limit)):
        record = {
            "question_id": qid,
            "image": rel_image,
            "text": text,
            "category": qid.split("/")[0],
        }
        items.append(
            Item(
                key=str(i),
                question_id=qid,
                message=prompts.with_image(text),
                prompt=text,
                image=cfg.image(release, rel_image, qid),
                meta={"record": record},
            )
        )
    return items


def load(cfg: DataConfig) -> list[Item]:
    """MME questions, images from the release folder."""
    path = cfg.questions(QUESTIONS)
    release = cfg.images(RELEASE)
    if os.path.exists(path):
        return llava_jsonl_items(path, release, cfg)
    return _build_items(release, cfg)


def original_question(prompt: str, category: str, name: str, truth: Mapping) -> str:
    """MME's own question for a LLaVA prompt (`convert_answer_to_mme.py` rules)."""
    question = prompt
    if prompts.SHORT_ANSWER in question:
        question = question.replace(prompts.SHORT_ANSWER, "").strip()
    if prompts.MME_YES_NO not in question:
        question = f"{question} {prompts.MME_YES_NO}"
        if (category, name, question) not in truth:
            # A few MME questions have two spaces before the instruction.
            question = question.replace(f" {prompts.MME_YES_NO}", f"  {prompts.MME_YES_NO}")
    return question


def parse_yes_no(text: str) -> str:
    """ "yes", "no" or "other" (`calculation.py`: lower-cased, judged on the first 4 characters)."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def score(items: Sequence[Item], answers: Mapping[str, dict], cfg: DataConfig, out_dir: str) -> Score:
    """Per-subtask `acc`, `acc_plus`, `score`; `perception` and `cognition` totals.

    Also writes the per-subtask files MME's `calculation.py` reads
    (`image<TAB>question<TAB>gt<TAB>answer`).
    """
    truth = read_ground_truth(cfg.annotations(RELEASE))
    rows: dict[str, list[tuple[str, str, str, str]]] = {}
    for item, text in answered(items, answers):
        qid = str(item.question_id)
        category = qid.split("/")[0]
        name = os.path.splitext(qid.split("/")[-1])[0] + ".txt"
        question = original_question(item.prompt, category, name, truth)
        if (category, name, question) not in truth:
            raise EvalDataError(f"no MME ground truth for {qid}: {question!r}")
        rows.setdefault(category, []).append((name, question, truth[(category, name, question)], text))

    metrics: dict = {}
    folder = os.path.join(out_dir, "mme_results")
    os.makedirs(folder, exist_ok=True)
    for category, cat_rows in rows.items():
        with open(os.path.join(folder, f"{category}.txt"), "w", encoding="utf-8") as f:
            f.writelines("\t".join(row) + "\n" for row in cat_rows)
        per_image: dict[str, list[bool]] = {}
        for name, _, gt, text in cat_rows:
            per_image.setdefault(name, []).append(parse_yes_no(text) == gt.lower())
        hits = [h for image_hits in per_image.values() for h in image_hits]
        acc = percent(sum(hits), len(hits))
        acc_plus = percent(sum(all(h) for h in per_image.values()), len(per_image))
        metrics[f"{category}/acc"] = acc
        metrics[f"{category}/acc_plus"] = acc_plus
        metrics[f"{category}/score"] = acc + acc_plus
    for total, members in (("perception", PERCEPTION), ("cognition", COGNITION)):
        metrics[total] = sum(metrics.get(f"{c}/score", 0.0) for c in members)
        metrics[f"{total}_subtasks"] = sum(f"{c}/score" in metrics for c in members)
    metrics["answered"] = sum(len(r) for r in rows.values())
    return Score(metrics, {"eval_tool_results": folder})
