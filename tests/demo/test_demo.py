"""`llava-jax demo --quick`: every step runs and leaves artifacts that load; a rerun reuses them all."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from llava_jax.cli import main

pytestmark = pytest.mark.slow

STEPS = ("data", "stage0a", "stage0b", "towers", "stage1", "stage2", "export", "eval", "plot+chat")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--workdir", str(out), "--quick", "--seed", "7", "--no-progress"]) == 0
    return out


def test_results_json(workdir):
    with open(workdir / "results.json") as f:
        results = json.load(f)
    types = ("color", "shape", "count", "position", "existence", "overall")
    assert set(results["accuracy"]) == set(types) == set(results["chance"])
    assert all(0.0 <= v <= 100.0 for v in results["accuracy"].values())
    assert results["chance"]["existence"] == pytest.approx(50.0)
    assert results["minutes"] > 0 and results["quick"] is True
    assert set(results["losses"]) == {"stage0a", "stage0b", "stage1", "stage2"}
    assert {"color_acc", "kind_acc", "count_acc", "token_color_acc"} <= set(results["tower_held_out_accuracy"])
    assert all(np.isfinite(c["last_loss"]) for c in results["losses"].values())
    with open(workdir / "eval" / "predictions.jsonl") as f:
        assert len(f.readlines()) == results["num_questions"]["overall"]


def test_loss_plot_is_a_png(workdir):
    from PIL import Image

    with Image.open(workdir / "loss.png") as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_checkpoints_load(workdir):
    from llava_jax import load

    final = load(str(workdir / "stage2" / "final"))
    stage1 = load(str(workdir / "stage1" / "final"))
    towers = load(str(workdir / "towers"))
    tower = load(str(workdir / "stage0a" / "init"))
    stage0b = load(str(workdir / "stage0b" / "final"))
    assert final.config.llm.vocab_size == 832 and final.config.image_token_index == 768
    assert final.tokenizer is not None
    # Stage 0b keeps the tower; the towers get a fresh projector; stage 1 trains the projector only;
    # stage 2 the projector and the LLM, never the tower.
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(*map(_leaves, (a, b))))
    assert same(stage0b.params["vision"], tower.params["vision"])
    assert same(towers.params["llm"], stage0b.params["llm"])
    assert not same(towers.params["projector"], stage0b.params["projector"])
    assert same(stage1.params["llm"], towers.params["llm"])
    assert same(stage1.params["vision"], towers.params["vision"])
    assert not same(stage1.params["projector"], towers.params["projector"])
    assert same(final.params["vision"], stage1.params["vision"])
    assert not same(final.params["llm"], stage1.params["llm"])
    # Stage 0b's random LLM: matrices at llm_init_scale (4) x std 0.02, RMSNorm scales left at 1.
    import jax

    for path, x in jax.tree_util.tree_leaves_with_path(tower.params["llm"]):
        x = np.asarray(x)
        if "scale" in jax.tree_util.keystr(path):
            np.testing.assert_array_equal(x, np.ones_like(x))
        else:
            assert 0.07 < x.std() < 0.09, jax.tree_util.keystr(path)


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_hf_export_loads_with_same_logits(workdir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from llava_jax import load

    hf = transformers.LlavaForConditionalGeneration.from_pretrained(str(workdir / "hf")).eval()
    model = load(str(workdir / "stage2" / "final"))
    rng = np.random.default_rng(0)
    ids = np.concatenate(
        [[1], np.full(model.config.image_seq_length, model.config.image_token_index), rng.integers(3, 700, 8)]
    )[None].astype(np.int64)
    size = model.config.vision.image_size
    pixels = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels)).logits.numpy()
    np.testing.assert_allclose(model.logits(ids, pixels), expected, rtol=1e-4, atol=1e-4)


def test_chat_transcript(workdir):
    with open(workdir / "chat" / "transcript.json") as f:
        chat = json.load(f)
    assert chat["seed"] == 7 and os.path.exists(chat["image"])
    assert len(chat["turns"]) == 4 and all(isinstance(t["answer"], str) for t in chat["turns"])


def test_rerun_reuses_every_step(workdir, capsys):
    with open(workdir / "timings.json") as f:
        before = json.load(f)["seconds"]
    assert set(before) == set(STEPS)
    assert main(["demo", "--workdir", str(workdir), "--quick", "--seed", "7", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for step in STEPS[:-1]:
        assert f"[demo] {step}: " in out and "reused" in out.split(f"[demo] {step}: ")[1].split("\n")[0]
    with open(workdir / "timings.json") as f:
        after = json.load(f)["seconds"]
    assert {k: after[k] for k in STEPS[:-1]} == {k: before[k] for k in STEPS[:-1]}
    assert "JAX already started: keeping" in out  # the suite's JAX runs first; the demo keeps its devices
    assert f"serve it: llava-jax serve --model {workdir / 'stage2' / 'final'} --ui" in out  # the summary's last line


def test_default_cpu_devices_is_a_power_of_two_per_core():
    from llava_jax.demo.run import default_cpu_devices

    assert [default_cpu_devices(c) for c in (1, 2, 3, 4, 6, 8, 32)] == [1, 2, 2, 4, 4, 8, 16]


def test_cpu_devices_are_set_before_jax_starts():
    import subprocess
    import sys

    code = "from llava_jax.demo.run import _set_cpu_devices; _set_cpu_devices(3); import jax; print(jax.device_count())"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "3"


def test_data_from_an_older_generator_rebuilds_every_stage(workdir, capsys):
    # Runs last: it rebuilds the module's workdir.
    manifest_path = workdir / "data" / "manifest.json"
    with open(manifest_path) as f:
        manifest = json.load(f)
    with open(manifest_path, "w") as f:
        json.dump(dict(manifest, version=manifest["version"] - 1), f)
    assert main(["demo", "--workdir", str(workdir), "--quick", "--seed", "7", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for step in STEPS[:-1]:
        line = out.split(f"[demo] {step}: ")[1].split("\n")[0]
        assert "reused" not in line, (step, line)
    with open(manifest_path) as f:
        assert json.load(f) == manifest
