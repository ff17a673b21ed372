"""Every benchmark end to end with scripted replies; scores checked against hand computation."""

import os

import openpyxl
import pytest

from llava_jax.eval import evaluate, format_table
from llava_jax.eval.common import DataConfig, EvalDataError
from tests.eval import fixtures


def _run(tmp_path, name, **data_kw):
    d, table = fixtures.make(name, str(tmp_path / "data"))
    out = str(tmp_path / "out" / name)
    scripted = fixtures.Scripted(table)
    results = evaluate(
        name,
        scripted,
        DataConfig(d, **data_kw),
        out,
        batch_size=2,
        model_size="7B",
        progress=False,
    )
    assert results == fixtures.read_json(os.path.join(out, "results.json"))
    assert results["answered"] == results["questions"]
    format_table(results)  # renders without error
    return results, out, scripted


def test_pope(tmp_path):
    r, _, _ = _run(tmp_path, "pope")
    m = r["metrics"]
    # adversarial: TP, FN, FP, TN -> every rate 50%
    for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert m[f"adversarial/{k}"] == pytest.approx(50.0)
    assert (
        m["adversarial/tp"],
        m["adversarial/fn"],
        m["adversarial/fp"],
        m["adversarial/tn"],
    ) == (1, 1, 1, 1)
    # popular: "Yes, there is a dog." -> yes (TP); "There is no cat." -> no (TN)
    assert m["popular/f1"] == pytest.approx(100.0) and m["popular/yes_ratio"] == 50.0
    # random: "Not sure" has no lower-case no/not word -> yes (TP); "I think yes" -> FP
    assert m["random/precision"] == pytest.approx(50.0) and m["random/recall"] == 100.0
    assert m["random/f1"] == pytest.approx(200 / 3)
    assert m["mean_f1"] == pytest.approx((50 + 100 + 200 / 3) / 3)
    assert m["mean_accuracy"] == pytest.approx((50 + 100 + 50) / 3)
    assert r["paper"] == {
        "size": "7B",
        "value": 85.9,
        "metric": "mean_f1",
        "ours": m["mean_f1"],
        "note": "F1 averaged over the three splits",
    }


def test_mme(tmp_path):
    r, out, _ = _run(tmp_path, "mme")
    m = r["metrics"]
    # existence: 3 of 4 right ("Yes, it is" for a No), one image fully right of two
    assert (m["existence/acc"], m["existence/acc_plus"], m["existence/score"]) == (
        75.0,
        50.0,
        125.0,
    )
    # code_reasoning: "The code is python" starts with neither yes nor no -> other
    assert m["code_reasoning/score"] == 50.0
    # artwork: two-space question variant matched; "Nope" reads as no
    assert m["artwork/score"] == 200.0
    assert m["perception"] == 325.0 and m["cognition"] == 50.0
    lines = fixtures.read_text(os.path.join(out, "mme_results", "artwork.txt")).splitlines()
    assert lines[0] == "10002.txt\tIs this artwork created by Leonardo?  Please answer yes or no.\tYes\tYes"


def test_mmbench_circular(tmp_path):
    r, out, _ = _run(tmp_path, "mmbench")
    m = r["metrics"]
    # sky group right in both rows; dogs group right in one row of two
    assert m["accuracy"] == 75.0 and m["circular_accuracy"] == 50.0
    assert m["circular/color"] == 100.0 and m["circular/count"] == 0.0
    assert m["questions"] == 2 and m["unparsed"] == 0
    book = openpyxl.load_workbook(os.path.join(out, "mmbench_dev_20230712.xlsx"), read_only=True)
    assert book.sheetnames == ["Sheet1"]
    table = list(book["Sheet1"].iter_rows(values_only=True))
    book.close()
    assert table[0] == ("index", "question", "A", "B", "C", "D", "prediction", "answer", "split")
    assert [row[0] for row in table[1:]] == [0, 1000000, 1, 1000001]  # numbers stay numbers
    # Third row, index 1: its option C ("None") is an empty cell, as pandas writes it.
    assert table[3] == (1, "How many dogs?", "1", "2", None, "4", "The answer is B", "B", "dev")
    assert table[2][6] == "C."


def test_mmbench_all_rounds(tmp_path):
    r, _, scripted = _run(tmp_path, "mmbench", all_rounds=True)
    assert r["questions"] == 3 + 3 + 2 + 2
    # sky: every rotation right; dogs: one of two rounds right in each row
    assert r["metrics"]["accuracy"] == 80.0 and r["metrics"]["circular_accuracy"] == 50.0
    assert len(scripted.seen) == 10


def test_mmbench_cn(tmp_path):
    r, _, _ = _run(tmp_path, "mmbench_cn")
    assert r["metrics"]["circular_accuracy"] == 100.0


def test_scienceqa(tmp_path):
    r, out, scripted = _run(tmp_path, "scienceqa")
    m = r["metrics"]
    # "B" right, "The answer is B." right (text-only), "C" is not an option of a 2-choice problem
    assert m["accuracy"] == pytest.approx(200 / 3) and m["img_accuracy"] == 50.0
    assert (m["count"], m["img_count"]) == (3, 2)
    saved = fixtures.read_json(os.path.join(out, "scienceqa_result.json"))
    assert saved["results"] == {"1": 1, "2": 1, "3": -1}
    assert [s[1] is None for s in scripted.seen] == [False, True, False]
    assert {s[2] for s in scripted.seen} == {1024}


def test_scienceqa_built_from_problems(tmp_path):
    d, table = fixtures.make("scienceqa", str(tmp_path / "data"))
    os.remove(os.path.join(d, "llava_test_CQM-A.json"))
    r = evaluate(
        "scienceqa",
        fixtures.Scripted(table),
        DataConfig(d),
        str(tmp_path / "o"),
        progress=False,
    )
    assert r["metrics"]["img_accuracy"] == 50.0


def test_seed(tmp_path):
    r, out, _ = _run(tmp_path, "seed")
    m = r["metrics"]
    # replies must equal the letter exactly: "B." is wrong
    assert m["accuracy"] == 75.0 and m["image_accuracy"] == pytest.approx(200 / 3)
    assert m["video_accuracy"] == 100.0
    assert m["dimension/Instances Counting"] == 50.0 and m["dimension/Scene Understanding"] == 100.0
    upload = fixtures.read_jsonl(os.path.join(out, "seed_bench_upload.jsonl"))
    assert upload[2] == {"question_id": "103", "prediction": "B."}


def test_gqa(tmp_path):
    r, out, _ = _run(tmp_path, "gqa")
    m = r["metrics"]
    assert m["accuracy"] == pytest.approx(100 / 3)  # only "Yes." -> "yes"
    assert m["accuracy_normalized"] == pytest.approx(200 / 3)  # articles dropped too
    preds = fixtures.read_json(os.path.join(out, "testdev_balanced_predictions.json"))
    assert preds[2] == {"questionId": "203", "prediction": "the black and white"}


def test_textvqa(tmp_path):
    r, _, _ = _run(tmp_path, "textvqa")
    # "Dakota." matches 4 of 10 -> 1.0; "2" matches the 3 "two" -> (3*2/3 + 7)/10 = 0.9
    assert r["metrics"]["accuracy"] == pytest.approx(95.0)


def test_vqav2_upload_and_local_accuracy(tmp_path):
    r, out, _ = _run(tmp_path, "vqav2", annotation_file="val_annotations.json")
    upload = fixtures.read_json(os.path.join(out, "vqav2_test-dev2015_upload.json"))
    assert upload == [
        {"question_id": 1, "answer": "2"},
        {"question_id": 2, "answer": "yes"},
        {"question_id": 3, "answer": "red 1"},
        {"question_id": 4, "answer": ""},
    ]
    # 1.0, (2*1/3 + 8*2/3)/10 = 0.6, 0.0
    assert r["metrics"]["accuracy"] == pytest.approx(160 / 3)


def test_vizwiz_upload_and_local_accuracy(tmp_path):
    r, out, _ = _run(tmp_path, "vizwiz", annotation_file="val.json")
    upload = fixtures.read_json(os.path.join(out, "vizwiz_test_upload.json"))
    assert upload == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"},
        {"image": "VizWiz_test_00000001.jpg", "answer": "bottle of water"},
    ]
    assert r["metrics"]["accuracy"] == pytest.approx(80.0)


def test_gpt_graded_files(tmp_path):
    _, out, _ = _run(tmp_path, "mmvet")
    assert fixtures.read_json(os.path.join(out, "mmvet_results.json")) == {
        "v1_0": "x = 3",
        "v1_1": "STOP",
    }
    r, out, _ = _run(tmp_path, "llava_bench")
    lines = fixtures.read_jsonl(os.path.join(out, "llava_bench_answers.jsonl"))
    assert [x["text"] for x in lines] == [
        "The Eiffel Tower.",
        "A red square.\nNothing else.",
    ]
    assert {
        "question_id",
        "prompt",
        "text",
        "answer_id",
        "model_id",
        "metadata",
    } <= set(lines[0])
    assert r["paper"]["ours"] is None and r["paper"]["value"] == 65.4


def test_limit_and_score_only(tmp_path):
    d, table = fixtures.make("pope", str(tmp_path / "data"))
    out = str(tmp_path / "out")
    evaluate("pope", fixtures.Scripted(table), DataConfig(d, limit=3), out, progress=False)
    rescored = evaluate("pope", None, DataConfig(d, limit=3), out, progress=False)
    assert rescored["answered"] == 3 and rescored["throughput"] is None
    assert rescored["metrics"]["adversarial/count"] == 3


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(EvalDataError, match="question file not found"):
        evaluate(
            "vqav2",
            None,
            DataConfig(str(tmp_path)),
            str(tmp_path / "o"),
            progress=False,
        )
    d, table = fixtures.make("textvqa", str(tmp_path / "data"))
    os.remove(os.path.join(d, "TextVQA_0.5.1_val.json"))
    with pytest.raises(EvalDataError, match="TextVQA annotation file"):
        evaluate(
            "textvqa",
            fixtures.Scripted(table),
            DataConfig(d),
            str(tmp_path / "o2"),
            progress=False,
        )


def test_cli_score_only(tmp_path, capsys):
    from llava_jax.cli import main

    d, table = fixtures.make("mme", str(tmp_path / "data"))
    out = str(tmp_path / "out")
    evaluate("mme", fixtures.Scripted(table), DataConfig(d), out, progress=False)
    rc = main(
        [
            "eval",
            "--benchmark",
            "mme",
            "--data",
            d,
            "--out",
            out,
            "--score-only",
            "--model-size",
            "13b",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert "perception" in printed and "325.00" in printed and "1531.30" in printed
    assert main(["eval", "--benchmark", "mme", "--data", d, "--out", out]) == 2
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "gqa",
                "--data",
                str(tmp_path),
                "--out",
                out,
                "--score-only",
            ]
        )
        == 2
    )
