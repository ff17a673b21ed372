"""Batching, answer-file format, resumption after an interruption, throughput stats."""

import pytest

from llava_jax.eval.common import DataConfig
from llava_jax.eval.records import Item, load_answers, model_name_from_path
from llava_jax.eval.registry import BENCHMARKS
from llava_jax.eval.runner import FunctionAnswerer, make_batches, run_items
from tests.eval import fixtures


def _items(n, image_every=None):
    return [
        Item(
            key=str(i),
            question_id=i,
            message=f"q{i}",
            prompt=f"q{i}",
            image=(lambda: None) if image_every and i % image_every == 0 else None,
        )
        for i in range(n)
    ]


def test_batches_keep_order_and_split_on_image_presence():
    items = [Item(str(i), i, "m", "p", image=(lambda: None) if i in (2, 3) else None) for i in range(7)]
    batches = make_batches(items, 3)
    assert [[it.key for it in b] for b in batches] == [
        ["0", "1"],
        ["2", "3"],
        ["4", "5", "6"],
    ]
    with pytest.raises(ValueError):
        make_batches(items, 0)


def _echo(requests):
    return [fixtures.message_of(r.prompt).upper() for r in requests]


def test_answer_file_format_and_stats(tmp_path):
    path = str(tmp_path / "answers.jsonl")
    items = _items(5)
    stats = run_items(
        items,
        FunctionAnswerer(_echo, "my-model"),
        path,
        batch_size=2,
        max_new_tokens=7,
        progress=False,
    )
    assert (stats.total, stats.reused, stats.answered, stats.batches) == (5, 0, 5, 3)
    assert stats.questions_per_second > 0
    lines = fixtures.read_jsonl(path)
    assert [x["text"] for x in lines] == ["Q0", "Q1", "Q2", "Q3", "Q4"]
    first = lines[0]
    assert list(first) == [
        "question_id",
        "prompt",
        "text",
        "answer_id",
        "model_id",
        "metadata",
    ]
    assert first["model_id"] == "my-model" and first["metadata"] == {"key": "0"}
    assert len(first["answer_id"]) == 22
    # A finished run has nothing left to do.
    again = run_items(
        items,
        FunctionAnswerer(_echo, "my-model"),
        path,
        batch_size=2,
        max_new_tokens=7,
        progress=False,
    )
    assert (again.reused, again.answered) == (5, 0)


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_same_file(tmp_path):
    d, table = fixtures.make("pope", str(tmp_path))
    items = BENCHMARKS["pope"].load(DataConfig(d))
    full = str(tmp_path / "full.jsonl")
    run_items(
        items,
        fixtures.Scripted(table),
        full,
        batch_size=3,
        max_new_tokens=4,
        progress=False,
    )

    calls = {"n": 0}
    scripted = fixtures.Scripted(table)

    def flaky(requests):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Interrupt
        return scripted.answer(requests)

    part = str(tmp_path / "part.jsonl")
    interrupted = FunctionAnswerer(flaky, "scripted")
    with pytest.raises(_Interrupt):
        run_items(items, interrupted, part, batch_size=3, max_new_tokens=4, progress=False)
    with open(part, "a") as f:  # a write cut short by the kill
        f.write('{"question_id": 3, "prompt": "Is th')
    assert len(load_answers(part)) == 3
    resumed = run_items(
        items,
        fixtures.Scripted(table),
        part,
        batch_size=2,
        max_new_tokens=4,
        progress=False,
    )
    assert (resumed.reused, resumed.answered) == (3, 5)
    assert fixtures.read_text(part, "rb") == fixtures.read_text(full, "rb")


def test_resume_refuses_answers_of_other_questions(tmp_path):
    path = str(tmp_path / "a.jsonl")
    run_items(
        _items(2),
        FunctionAnswerer(_echo),
        path,
        batch_size=2,
        max_new_tokens=1,
        progress=False,
    )
    other = [Item("0", 99, "q", "q"), Item("1", 1, "q", "q")]
    with pytest.raises(ValueError, match="other questions"):
        run_items(
            other,
            FunctionAnswerer(_echo),
            path,
            batch_size=2,
            max_new_tokens=1,
            progress=False,
        )


def test_wrong_answer_count_is_an_error(tmp_path):
    with pytest.raises(RuntimeError):
        run_items(
            _items(3),
            FunctionAnswerer(lambda rs: ["x"]),
            str(tmp_path / "a.jsonl"),
            batch_size=3,
            max_new_tokens=1,
            progress=False,
        )


def test_prepare_runs_ahead_and_images_are_loaded(tmp_path):
    d, table = fixtures.make("vqav2", str(tmp_path))
    scripted = fixtures.Scripted(table)
    run_items(
        BENCHMARKS["vqav2"].load(DataConfig(d)),
        scripted,
        str(tmp_path / "a.jsonl"),
        batch_size=2,
        max_new_tokens=128,
        progress=False,
    )
    assert scripted.batch_sizes == [2, 1]
    assert [s[1] for s in scripted.seen] == [(20, 14)] * 3
    assert {s[2] for s in scripted.seen} == {128}


def test_model_name_from_path():
    assert model_name_from_path("/ckpts/llava-v1.5-7b/") == "llava-v1.5-7b"
    assert model_name_from_path("runs/exp1/checkpoint-500") == "exp1_checkpoint-500"


def test_progress_bar_counts_reused_answers_and_is_off_when_disabled(tmp_path, capsys):
    path = str(tmp_path / "answers.jsonl")
    answerer = FunctionAnswerer(_echo, "my-model")
    run_items(_items(3), answerer, path, batch_size=2, max_new_tokens=7, progress=False, desc="first")
    assert capsys.readouterr().err == ""
    run_items(_items(5), answerer, path, batch_size=2, max_new_tokens=7, progress=True, desc="second")
    err = capsys.readouterr().err
    assert "second" in err and "3/5" in err and "5/5" in err and "qps=" in err  # starts at the 3 reused
