"""End-to-end training runs of the tiny config: both stages, NaN stop.

Sharding equivalence is tested on the step (tests/train/test_step.py); kill and resume, across processes,
in tests/launch/test_multiprocess.py.
"""

import os

import jax
import numpy as np
import pytest

import llava_jax
from llava_jax.train.experiment import load_config
from llava_jax.train.loop import TrainingDiverged, run
from llava_jax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    """A small synthetic set (96 captions, 96 conversations) shared by the runs."""
    from llava_jax.demo.synthetic import write_synthetic_dataset

    out = str(tmp_path_factory.mktemp("synthetic"))
    write_synthetic_dataset(out, num_captions=96, num_qa=96, num_eval=8, image_size=56, seed=0)
    return out


def _data(synthetic_dir, stage="pretrain"):
    name = "stage1_captions" if stage == "pretrain" else "stage2_instruct"
    return [f"--config.data.json={synthetic_dir}/{name}.json", f"--config.data.image_root={synthetic_dir}/images"]


# Batch 8; checkpoints only where a test asks for them (each save costs about as much as a few steps).
SMALL_RUN = (
    "--config.progress=False",
    "--config.batch_size=8",
    "--config.checkpoint.every_steps=1000",
)


def _config(synthetic_dir, *overrides, stage="pretrain"):
    base = [*_data(synthetic_dir, stage), *SMALL_RUN]
    return load_config(f"{TINY}:{stage}", base + list(overrides))


def _losses(workdir):
    return [row["train/loss"] for row in read_metrics(workdir)]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))


@pytest.mark.slow
def test_both_stages_learn_and_train_only_their_parameters(synthetic_dir, tmp_path):
    from llava_jax.demo.synthetic import synthetic_tokenizer
    from llava_jax.presets import tiny

    # Stage 1 trains the projector against a frozen LLM. A random tiny LLM's head gives near-uniform
    # logits that no input can sharpen, so give the frozen LLM a pretrained model's logit scale.
    init = llava_jax.random_model(
        tiny(vocab_size=832, image_token_index=768, image_size=56), tokenizer=synthetic_tokenizer()
    )
    init.params["llm"]["lm_head"]["kernel"] = init.params["llm"]["lm_head"]["kernel"] * 30.0
    init.save(str(tmp_path / "init"))
    stage1 = _config(
        synthetic_dir,
        "--config.init.kind=llava",
        f"--config.init.path={tmp_path / 'init'}",
        "--config.optim.lr=1e-2",
        "--config.num_steps=12",
    )
    run(stage1, str(tmp_path / "s1"))
    losses = _losses(tmp_path / "s1")
    assert len(losses) == 12
    assert np.mean(losses[-4:]) < losses[0] - 3.0, losses
    before, after = llava_jax.load(str(tmp_path / "init")), llava_jax.load(str(tmp_path / "s1" / "final"))
    assert _same(before.params["vision"], after.params["vision"])
    assert _same(before.params["llm"], after.params["llm"])
    assert not _same(before.params["projector"], after.params["projector"])

    stage2 = _config(
        synthetic_dir,
        f"--config.init.path={tmp_path / 's1' / 'final'}",
        "--config.num_steps=12",
        "--config.optim.lr=2e-3",
        stage="finetune",
    )
    run(stage2, str(tmp_path / "s2"))
    losses = _losses(tmp_path / "s2")
    assert np.mean(losses[-4:]) < losses[0] - 1.0, losses
    final = llava_jax.load(str(tmp_path / "s2" / "final"))
    assert _same(after.params["vision"], final.params["vision"])
    assert not _same(after.params["llm"], final.params["llm"])
    assert not _same(after.params["projector"], final.params["projector"])
    # A finished workdir is not trained again.
    assert run(stage2, str(tmp_path / "s2"))["steps"] is None


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_dir, tmp_path):
    cfg = _config(
        synthetic_dir,
        "--config.num_steps=6",
        "--config.optim.lr=1e30",
        "--config.optim.warmup_ratio=0.0",
        "--config.checkpoint.every_steps=1",
        "--config.checkpoint.async_save=False",
    )
    with pytest.raises(TrainingDiverged, match=r"step 2: non-finite loss"):
        run(cfg, str(tmp_path / "nan"))
    steps = sorted(int(d) for d in os.listdir(tmp_path / "nan" / "checkpoints") if d.isdigit())
    assert steps == [1]
    assert not os.path.exists(tmp_path / "nan" / "final")
