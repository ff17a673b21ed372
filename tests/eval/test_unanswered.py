"""Scores comparable with the paper: an unanswered question counts as wrong over the whole split.

LLaVA's `eval_science_qa.py` scores every test problem ("FAILED" when there is no
prediction) and `convert_seed_for_submission.py` every annotated question; the
answered-only accuracy is reported beside the headline, labelled.
"""

import os

import pytest

from llava_jax.eval import evaluate, format_table, scienceqa, seed
from llava_jax.eval.common import DataConfig
from llava_jax.eval.records import load_answers, read_json
from tests.eval import fixtures


def _answers_without(tmp_path, name, drop: set[str]):
    """Items, answers of every item but the `drop` keys, and the data config."""
    d, table = fixtures.make(name, str(tmp_path / "data"))
    cfg = DataConfig(d)
    results = evaluate(name, fixtures.Scripted(table), cfg, str(tmp_path / "full"), progress=False)
    assert results["answered"] == results["questions"]
    by_key = load_answers(os.path.join(str(tmp_path / "full"), "answers.jsonl"))
    items = {"scienceqa": scienceqa.load, "seed": seed.load}[name](cfg)
    return items, {k: v for k, v in by_key.items() if k not in drop}, cfg, results["metrics"]


def test_scienceqa_unanswered_counts_as_wrong(tmp_path):
    items, answers, cfg, full = _answers_without(tmp_path, "scienceqa", {"1"})
    # All answered: 2 of 3 right, 1 of 2 image problems ("1" right, "3" wrong).
    assert full["accuracy"] == pytest.approx(200 / 3) and full["img_accuracy"] == 50.0
    out = str(tmp_path / "partial")
    os.makedirs(out)
    score = scienceqa.score(items, answers, cfg, out)
    m = score.metrics
    # Problem 1 (an image problem, answered right before) now unanswered: wrong, still in both denominators.
    assert (m["count"], m["img_count"], m["answered"], m["img_answered"]) == (3, 2, 2, 1)
    assert m["accuracy"] == pytest.approx(100 / 3) and m["img_accuracy"] == 0.0
    assert m["accuracy_answered"] == 50.0 and m["img_accuracy_answered"] == 0.0
    saved = read_json(os.path.join(out, "scienceqa_result.json"))
    assert saved["count"] == 3 and saved["results"]["1"] == -1 and saved["outputs"]["1"] == "FAILED"
    assert any("unanswered" in note for note in score.notes)


def test_seed_unanswered_counts_as_wrong(tmp_path):
    items, answers, cfg, full = _answers_without(tmp_path, "seed", set())
    assert full["accuracy"] == 75.0
    by_qid = {str(item.question_id): item.key for item in items}
    answers.pop(by_qid["101"])  # an image question answered right
    out = str(tmp_path / "partial")
    os.makedirs(out)
    score = seed.score(items, answers, cfg, out)
    m = score.metrics
    assert (m["questions"], m["answered"]) == (4, 3)
    assert m["accuracy"] == 50.0 and m["accuracy_answered"] == pytest.approx(200 / 3)
    assert m["image_accuracy"] == pytest.approx(100 / 3) and m["video_accuracy"] == 100.0
    assert m["dimension/Scene Understanding"] == 0.0
    upload = fixtures.read_jsonl(os.path.join(out, "seed_bench_upload.jsonl"))
    assert [u["question_id"] for u in upload] == ["102", "103", "104"]
    assert any("unanswered" in note for note in score.notes)


def test_summary_labels_the_answered_only_figure(tmp_path):
    d, table = fixtures.make("scienceqa", str(tmp_path / "data"))
    results = evaluate("scienceqa", fixtures.Scripted(table), DataConfig(d), str(tmp_path / "o"), progress=False)
    table_text = format_table(results)
    assert "img_accuracy_answered" in table_text and "img_accuracy " in table_text
