"""Evaluation reads images only inside the benchmark's image folder, and only bounded regular files."""

import json
import os
import threading

import pytest

from llava_jax.cli import main
from llava_jax.data.paths import ImageFileError
from llava_jax.eval import evaluate
from llava_jax.eval.common import DataConfig, EvalDataError
from llava_jax.eval.records import FileImage, file_image
from tests.eval import fixtures


@pytest.fixture
def hostile_pope(tmp_path):
    """The POPE fixture whose question 2 names an image outside its folder (which exists: a real escape)."""
    d, table = fixtures.make("pope", str(tmp_path / "data"))
    path = os.path.join(d, "llava_pope_test.jsonl")
    records = fixtures.read_jsonl(path)
    records[2]["image"] = "../../secret.jpg"
    fixtures.write_jsonl(path, records)
    fixtures.write_image(str(tmp_path / "data" / "secret.jpg"))
    return d, table


def test_a_question_image_outside_the_folder_is_refused_by_name(hostile_pope, tmp_path, capsys):
    d, table = hostile_pope
    out = str(tmp_path / "out")
    with pytest.raises(EvalDataError, match=r"question 2: image '../../secret.jpg' climbs out of .*val2014"):
        evaluate("pope", fixtures.Scripted(table), DataConfig(d), out, batch_size=2, progress=False)
    assert not os.path.exists(os.path.join(out, "answers.jsonl"))
    assert main(["eval", "--benchmark", "pope", "--data", d, "--out", out, "--score-only"]) == 2
    assert "question 2: image '../../secret.jpg' climbs out" in capsys.readouterr().err
    # Allowed explicitly, the run goes through.
    results = evaluate(
        "pope", fixtures.Scripted(table), DataConfig(d, allow_outside_root=True), out, batch_size=2, progress=False
    )
    assert results["answered"] == results["questions"] == 8
    assert json.loads(open(os.path.join(out, "answers.jsonl")).readline())["question_id"] == 0


def test_file_images_read_only_bounded_regular_files(tmp_path):
    fixtures.write_image(str(tmp_path / "ok.png"))
    assert file_image(str(tmp_path), "ok.png")().size == (20, 14)
    with pytest.raises(ImageFileError, match="absolute path"):
        file_image(str(tmp_path), "/etc/passwd")
    os.mkfifo(tmp_path / "pipe.png")
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("error", _error(FileImage(str(tmp_path / "pipe.png")))))
    thread.daemon = True
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and "not a regular file" in result["error"]
    assert "byte cap" in _error(FileImage(str(tmp_path / "ok.png"), max_bytes=10))


def _error(image) -> str:
    try:
        image()
    except ImageFileError as e:
        return str(e)
    return ""


def test_bad_question_files_name_the_file_and_line(tmp_path):
    from llava_jax.eval.records import iter_jsonl, read_json

    (tmp_path / "q.jsonl").write_text('{"question_id": 1}\n{"question_id": \n')
    with pytest.raises(ValueError, match=r"q.jsonl line 2: invalid JSON"):
        list(iter_jsonl(str(tmp_path / "q.jsonl")))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"deep.json: JSON nested too deeply"):
        read_json(str(tmp_path / "deep.json"))
