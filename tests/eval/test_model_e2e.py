"""Every benchmark type end to end on a tiny random model loaded with `llava_jax.load`.

The model is a random HF `LlavaForConditionalGeneration` (with a small
SentencePiece tokenizer) saved locally and loaded back; its answers are noise,
so these tests check plumbing and invariances, not scores (its weights are
scaled up so that different questions get different answers): every question
answered and scored, batch composition and padding do not change answers, the
eval path agrees with `Llava.chat`, and the CLI runs.
"""

import os
import shutil

import pytest

from llava_jax.eval import evaluate
from llava_jax.eval.common import DataConfig
from llava_jax.eval.registry import BENCHMARKS
from tests.eval import fixtures

NEW_TOKENS = 5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, torch_cpu):
    from tests.data.helpers import write_tokenizer
    from tests.hf_fixtures import hf_llava, save

    root = tmp_path_factory.mktemp("eval_model")
    tok_dir = write_tokenizer(str(root / "tok"), vocab_size=512)
    # Text vocab 520 holds the image token (512) past the tokenizer's 512 pieces.
    hf = hf_llava(seed=11, text={"vocab_size": 520}, image_token_index=512)
    # Larger weights: answers then differ from question to question.
    with torch_cpu.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    directory = save(hf, str(root / "tiny-llava"))
    for name in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, name), directory)
    return directory


@pytest.fixture(scope="module")
def model(model_dir):
    import llava_jax

    return llava_jax.load(model_dir, dtype="float32")


def _answerer(model, batch_size):
    from llava_jax.eval.model_answerer import ModelAnswerer

    return ModelAnswerer(model, model_id="tiny-llava", batch_size=batch_size, length_multiple=32)


def test_every_benchmark_runs_on_a_tiny_model(tmp_path, model):
    answerer = _answerer(model, 3)
    for name in sorted(BENCHMARKS):
        d, _ = fixtures.make(name, str(tmp_path / "data"))
        out = str(tmp_path / "out" / name)
        r = evaluate(
            name,
            answerer,
            DataConfig(d),
            out,
            batch_size=3,
            max_new_tokens=NEW_TOKENS,
            progress=False,
        )
        assert r["answered"] == r["questions"] > 0, name
        assert r["throughput"]["answered_this_run"] == r["questions"]
        records = fixtures.read_jsonl(os.path.join(out, "answers.jsonl"))
        assert all(isinstance(x["text"], str) and x["model_id"] == "tiny-llava" for x in records)


def test_answers_do_not_depend_on_batching_and_match_chat(tmp_path, model):
    d, _ = fixtures.make("vqav2", str(tmp_path / "data"))
    files = []
    for batch_size in (1, 3):
        out = str(tmp_path / f"b{batch_size}")
        evaluate(
            "vqav2",
            _answerer(model, batch_size),
            DataConfig(d),
            out,
            batch_size=batch_size,
            max_new_tokens=NEW_TOKENS,
            progress=False,
        )
        files.append(fixtures.read_text(os.path.join(out, "answers.jsonl"), "rb"))
    assert files[0] == files[1]

    from PIL import Image

    records = fixtures.read_jsonl(os.path.join(d, "llava_vqav2_mscoco_test-dev2015.jsonl"))
    images = [Image.open(os.path.join(d, "test2015", r["image"])).convert("RGB") for r in records]
    chat = model.chat(images, [r["text"] for r in records], max_new_tokens=NEW_TOKENS, temperature=0.0)
    ours = [x["text"] for x in fixtures.read_jsonl(os.path.join(str(tmp_path / "b3"), "answers.jsonl"))]
    assert ours == chat
    assert len(set(ours)) > 1  # the invariances above are not vacuous


def test_cli_eval_with_a_model(tmp_path, model_dir, capsys):
    from llava_jax.cli import main

    d, _ = fixtures.make("mmbench", str(tmp_path / "data"))
    out = str(tmp_path / "out")
    argv = [
        "eval",
        "--model",
        model_dir,
        "--benchmark",
        "mmbench",
        "--data",
        d,
        "--out",
        out,
        "--batch-size",
        "2",
        "--max-new-tokens",
        str(NEW_TOKENS),
        "--dtype",
        "float32",
        "--mesh",
        "none",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "MMBench dev: 4/4 answered" in printed and "questions/s" in printed
    assert os.path.exists(os.path.join(out, "mmbench_dev_20230712.xlsx"))
    # Rerunning resumes: nothing left to generate.
    assert main(argv) == 0
    results = fixtures.read_json(os.path.join(out, "results.json"))
    assert results["throughput"]["answered_this_run"] == 0
    assert results["model_id"] == "tiny-llava"


def test_sharded_batch_gives_the_same_answers(tmp_path, model_dir, model):
    import llava_jax
    from llava_jax.sharding import MESH_PRESETS, make_mesh

    mesh = make_mesh(MESH_PRESETS["data"])  # the 8 simulated CPU devices of the test set-up
    sharded = llava_jax.load(model_dir, dtype="float32", mesh=mesh)
    assert _answerer(sharded, 3).batch_size == mesh.shape["data"]
    d, _ = fixtures.make("pope", str(tmp_path / "data"))
    texts = []
    for m in (model, sharded):
        out = str(tmp_path / str(len(texts)))
        evaluate(
            "pope",
            _answerer(m, 3),
            DataConfig(d),
            out,
            batch_size=3,
            max_new_tokens=NEW_TOKENS,
            progress=False,
        )
        texts.append([x["text"] for x in fixtures.read_jsonl(os.path.join(out, "answers.jsonl"))])
    assert texts[0] == texts[1]
