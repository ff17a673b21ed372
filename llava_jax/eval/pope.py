"""POPE (COCO): yes/no object hallucination, per negative-sampling split and their mean.

Questions come from LLaVA's `llava_pope_test.jsonl` (each with a `category`
in random / popular / adversarial) and labels from POPE's
`coco/coco_pope_{category}.json`, matched by position within the category as
`eval_pope.py` does. Without LLaVA's file the questions are built from the
POPE files themselves (short-answer prompt, labels carried along).
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
from llava_jax.eval.records import Item, iter_jsonl

QUESTIONS = "llava_pope_test.jsonl"
IMAGES = "val2014"
ANNOTATIONS = "coco"
CATEGORIES = ("adversarial", "popular", "random")


def _label_file(folder: str, category: str) -> str:
    return os.path.join(folder, f"coco_pope_{category}.json")


def load(cfg: DataConfig) -> list[Item]:
    """POPE questions: LLaVA's file if present, else built from the POPE files."""
    path = cfg.questions(QUESTIONS)
    if os.path.exists(path):
        return llava_jsonl_items(path, cfg.images(IMAGES), cfg)
    folder, images = cfg.annotations(ANNOTATIONS), cfg.images(IMAGES)
    records = []
    for category in CATEGORIES:
        if os.path.exists(_label_file(folder, category)):
            records += [(category, rec) for rec in iter_jsonl(_label_file(folder, category))]
    if not records:
        raise EvalDataError(f"POPE questions not found: {path} (nor {folder}/coco_pope_*.json)")
    items = []
    for i, (category, rec) in enumerate(limited(records, cfg.limit)):
        text = prompts.short_answer(rec["text"])
        record = {
            "question_id": i,
            "image": rec["image"],
            "text": text,
            "category": category,
        }
        items.append(
            Item(
                key=str(i),
                question_id=i,
                message=prompts.with_image(text),
                prompt=text,
                image=cfg.image(images, rec["image"], i),
                meta={"record": record, "label": rec["label"]},
            )
        )
    return items


def parse_yes_no(text: str) -> str:
    """ "yes" or "no" from a reply (`eval_pope.py`: first sentence, any no/No/not word -> no)."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def binary_metrics(preds: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, precision, recall, F1 (percent), yes-ratio and the confusion counts.

    "yes" is the positive class; a label other than "no" counts as "yes", as
    in the reference. Empty denominators give 0 where the reference divides by zero.
    """
    pos = [p != "no" for p in preds]
    gold = [g != "no" for g in labels]
    tp = sum(p and g for p, g in zip(pos, gold))
    fp = sum(p and not g for p, g in zip(pos, gold))
    tn = sum(not p and not g for p, g in zip(pos, gold))
    fn = sum(not p and g for p, g in zip(pos, gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = tp + fp + tn + fn
    return {
        "accuracy": percent(tp + tn, n),
        "precision": 100 * precision,
        "recall": 100 * recall,
        "f1": 100 * f1,
        "yes_ratio": percent(sum(pos), len(pos)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "count": n,
    }


def score(items: Sequence[Item], answers: Mapping[str, dict], cfg: DataConfig, out_dir: str) -> Score:
    """Per-split metrics (`{split}/accuracy`, ...) and their unweighted means (`mean_f1`, ...)."""
    folder = cfg.annotations(ANNOTATIONS)
    per_category: dict[str, list[tuple[Item, str]]] = {}
    for item, text in answered(items, answers):
        per_category.setdefault(item.meta["record"]["category"], []).append((item, text))
    # Labels pair with answers by position inside each category, so the answers
    # must be a prefix of the category's questions in file order.
    position: dict[str, int] = {}
    seen: dict[str, int] = {}
    for item in items:
        category = item.meta["record"]["category"]
        position[item.key] = seen.get(category, 0)
        seen[category] = position[item.key] + 1
    metrics: dict = {}
    for category in sorted(per_category):
        pairs = per_category[category]
        if all("label" in item.meta for item, _ in pairs):
            labels = [item.meta["label"] for item, _ in pairs]
        else:
            path = _label_file(folder, category)
            if not os.path.exists(path):
                raise EvalDataError(f"POPE labels for {category!r} not found: {path}")
            all_labels = [rec["label"] for rec in iter_jsonl(path)]
            labels = [all_labels[position[item.key]] for item, _ in pairs]
        preds = [parse_yes_no(text) for _, text in pairs]
        for name, value in binary_metrics(preds, labels).items():
            metrics[f"{category}/{name}"] = value
    categories = sorted(per_category)
    for name in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        values = [metrics[f"{c}/{name}"] for c in categories]
        metrics[f"mean_{name}"] = sum(values) / len(values) if values else 0.0
    metrics["answered"] = sum(len(p) for p in per_category.values())
    return Score(metrics)
