"""`llava-jax eval` with a high-resolution (anyres, LLaVA-NeXT) model: every question answered, the
answers independent of batching and equal to `Llava.chat` (which tiles and counts images the same way)."""

import os
import shutil

import numpy as np
import pytest

from llava_jax.eval import evaluate
from llava_jax.eval.common import DataConfig
from tests.eval import fixtures

NEW_TOKENS = 5


@pytest.fixture(scope="module")
def next_model_dir(tmp_path_factory, torch_cpu):
    from tests.data.helpers import write_tokenizer
    from tests.hf_fixtures import hf_llava_next, save

    root = tmp_path_factory.mktemp("eval_next")
    tok_dir = write_tokenizer(str(root / "tok"), vocab_size=512)
    hf = hf_llava_next(seed=12, text={"vocab_size": 520}, image_token_index=512)
    with torch_cpu.no_grad():  # larger weights: answers differ from question to question
        for p in hf.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    directory = save(hf, str(root / "tiny-llava-next"))
    for name in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, name), directory)
    return directory


def test_eval_runs_with_anyres_and_matches_chat(tmp_path, next_model_dir):
    from PIL import Image

    import llava_jax
    from llava_jax.cli import main
    from llava_jax.eval.model_answerer import ModelAnswerer

    model = llava_jax.load(next_model_dir, dtype="float32")
    assert model.config.anyres is not None
    d, _ = fixtures.make("vqav2", str(tmp_path / "data"))
    records = fixtures.read_jsonl(os.path.join(d, "llava_vqav2_mscoco_test-dev2015.jsonl"))
    rng = np.random.default_rng(0)
    for k, r in enumerate(records):  # images of different sizes: different grids and token counts
        w, h = [(70, 30), (40, 90), (12, 10), (150, 200)][k % 4]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(os.path.join(d, "test2015", r["image"]))
    texts = []
    for batch_size in (1, 3):
        out = str(tmp_path / f"b{batch_size}")
        answerer = ModelAnswerer(model, model_id="tiny-next", batch_size=batch_size, length_multiple=32)
        r = evaluate(
            "vqav2", answerer, DataConfig(d), out, batch_size=batch_size, max_new_tokens=NEW_TOKENS, progress=False
        )
        assert r["answered"] == r["questions"] > 0
        texts.append([x["text"] for x in fixtures.read_jsonl(os.path.join(out, "answers.jsonl"))])
    assert texts[0] == texts[1]
    images = [Image.open(os.path.join(d, "test2015", r["image"])).convert("RGB") for r in records]
    assert len({model.config.image_tokens(im.height, im.width) for im in images}) > 1
    chat = model.chat(images, [r["text"] for r in records], max_new_tokens=NEW_TOKENS, temperature=0.0)
    assert texts[1] == chat and len(set(chat)) > 1
    # The CLI on another benchmark (raw PIL images handed over, as ScienceQA/MMBench do).
    argv = [
        "eval",
        "--model",
        next_model_dir,
        "--benchmark",
        "mmbench",
        "--data",
        fixtures.make("mmbench", str(tmp_path / "mm"))[0],
    ]
    argv += ["--out", str(tmp_path / "mm_out"), "--batch-size", "2", "--max-new-tokens", str(NEW_TOKENS)]
    assert main(argv + ["--dtype", "float32", "--mesh", "none", "--no-progress"]) == 0
