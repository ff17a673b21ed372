"""`llava-jax demo --quick` from an installed wheel: every step runs and leaves artifacts that load; a rerun
reuses them all. Then `--hd`: the LLaVA-1.5-HD variant runs end to end and compares HD with non-HD.

The suite's demo runs. A wheel built from this checkout is installed into a
fresh virtual environment (its dependencies come from the running interpreter's
site-packages through a `.pth` line, so nothing is downloaded), and its
`llava-jax` script runs the demo from a directory outside the repository, in a
fresh process (so the demo picks its own CPU devices). The tests below read that
workdir; the step runner's rebuild rules are unit-tested in test_run.py. The HD
run comes last, in a process like the first (the programs its stages share with
the plain demo's are then loaded from the suite's compilation cache).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo")]

REPO = Path(__file__).resolve().parents[2]
STEPS = ("data", "stage0a", "stage0b", "towers", "stage1", "stage2", "export", "eval", "plot+chat")
SEED = 7


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with llava_jax installed from a wheel of this checkout (and nothing else of its own)."""
    root = tmp_path_factory.mktemp("wheel")
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = root / "src"
    shutil.copytree(REPO / "llava_jax", src / "llava_jax", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.py", src / "setup.py")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    # Offline: the build uses this environment's setuptools, and --no-index keeps pip off the network.
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root / "dist", src])
    (wheel,) = (root / "dist").glob("llava_jax-*.whl")
    _run([sys.executable, "-m", "venv", "--without-pip", root / "venv"])
    python = root / "venv" / "bin" / "python"
    _run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel])
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # A plain path line: the directory joins sys.path after the venv's own site-packages, and its .pth files
    # (among them an editable install of this checkout, if any) are not run.
    (Path(purelib) / "_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return root / "venv"


def _fresh_env() -> dict:
    """This environment without the checkout on the path and without the suite's 8 devices (its other XLA
    flags and its compilation cache stay)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "xla_force_host_platform_device_count" not in f)
    return env


def _demo(venv: Path, workdir: Path, *options, seed: int = SEED) -> str:
    cmd = [
        venv / "bin" / "llava-jax",
        "demo",
        "--quick",
        *options,
        "--workdir",
        workdir,
        "--seed",
        seed,
        "--no-progress",
    ]
    return _run(cmd, cwd=workdir.parent, env=_fresh_env(), timeout=900).stdout


def _read(path: Path):
    with open(path) as f:
        return [json.loads(line) for line in f] if path.suffix == ".jsonl" else json.load(f)


def _correct_half(predictions: Path) -> dict[str, float]:
    """Give every other answer of each question type the truth (case and punctuation changed); returns what
    the predictions file scores now."""
    records = _read(predictions)
    seen: dict[str, int] = {}
    for r in records:
        seen[r["category"]] = seen.get(r["category"], 0) + 1
        if seen[r["category"]] % 2:
            r["text"] = f"{r['answer'].upper()}."
    predictions.write_text("".join(json.dumps(r) + "\n" for r in records))
    return _scores(records)


def _scores(records) -> dict[str, float]:
    """Percent of answers equal to the truth after `normalize_answer`, per question type and overall."""
    from llava_jax.demo.synthetic import normalize_answer

    right = [normalize_answer(r["text"]) == normalize_answer(r["answer"]) for r in records]
    out = {"overall": 100.0 * sum(right) / len(right)}
    for qtype in {r["category"] for r in records}:
        mine = [ok for ok, r in zip(right, records) if r["category"] == qtype]
        out[qtype] = 100.0 * sum(mine) / len(mine)
    return out


@pytest.fixture(scope="module")
def demo(venv, tmp_path_factory) -> dict:
    """The demo run, then a rerun on the same workdir after half the saved answers were corrected."""
    outside = tmp_path_factory.mktemp("elsewhere")
    workdir = outside / "demo"
    code = "import llava_jax; print(llava_jax.__file__)"
    where = _run([venv / "bin" / "python", "-c", code], cwd=outside, env=_fresh_env())
    first_out = _demo(venv, workdir)
    first = {name: _read(workdir / name) for name in ("results.json", "timings.json", "chat/transcript.json")}
    first["eval/predictions.jsonl"] = _read(workdir / "eval" / "predictions.jsonl")
    expected_accuracy = _correct_half(workdir / "eval" / "predictions.jsonl")
    rerun_out = _demo(venv, workdir)
    return {
        "workdir": workdir,
        "llava_jax_file": where.stdout.strip(),
        "first": first,
        "first_out": first_out,
        "rerun_out": rerun_out,
        "expected_accuracy": expected_accuracy,
    }


def test_demo_runs_from_the_installed_wheel(venv, demo):
    installed = Path(demo["llava_jax_file"]).resolve()
    assert installed.is_relative_to(venv.resolve()), installed
    assert not installed.is_relative_to(REPO), installed
    assert all(f"[demo] {step}: " in demo["first_out"] for step in STEPS[:-1])
    final = demo["workdir"] / "stage2" / "final"
    assert f"serve it: llava-jax serve --model {final} --ui" in demo["first_out"]  # the summary's last line


def test_results_json(demo):
    results = demo["first"]["results.json"]
    types = ("color", "shape", "count", "position", "existence", "overall")
    assert set(results["accuracy"]) == set(types) == set(results["chance"])
    assert results["chance"]["existence"] == pytest.approx(50.0)
    assert results["quick"] is True
    # The accuracy is what the predictions file scores: exact match after normalisation, per type.
    predictions, items = demo["first"]["eval/predictions.jsonl"], _read(demo["workdir"] / "data/eval_questions.jsonl")
    assert [str(p["question_id"]) for p in predictions] == [str(i["question_id"]) for i in items]
    assert [p["answer"] for p in predictions] == [i["answer"] for i in items]
    assert results["accuracy"] == pytest.approx(_scores(predictions))
    for qtype in types:
        assert results["num_questions"][qtype] == sum(qtype in ("overall", p["category"]) for p in predictions)
    # Minutes are the recorded step times; the fresh process took one CPU device per core (up to a power of 2).
    seconds = demo["first"]["timings.json"]["seconds"]
    assert set(seconds) == set(STEPS)
    assert results["minutes"] == pytest.approx(sum(seconds.values()) / 60, abs=0.01)
    from llava_jax.demo.run import default_cpu_devices

    assert results["device"].startswith(f"{default_cpu_devices()} x "), results["device"]
    assert {"color_acc", "kind_acc", "count_acc", "token_color_acc"} <= set(results["tower_held_out_accuracy"])


def test_losses_are_the_stages_metrics(demo):
    results = demo["first"]["results.json"]
    assert set(results["losses"]) == {"stage0a", "stage0b", "stage1", "stage2"}
    for stage, curve in results["losses"].items():
        rows = [r for r in _read(demo["workdir"] / stage / "metrics.jsonl") if "train/loss" in r]
        losses = [r["train/loss"] for r in rows]
        assert curve["steps"] == rows[-1]["step"] == len(rows), stage
        assert curve["first_loss"] == pytest.approx(losses[0]), stage
        assert curve["last_loss"] == pytest.approx(np.mean(losses[-10:])), stage
        assert np.isfinite(losses).all(), stage


def test_loss_plot_is_a_png(demo):
    from PIL import Image

    with Image.open(demo["workdir"] / "loss.png") as im:
        assert im.format == "PNG" and im.size[0] > 300


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_checkpoints_load(demo):
    import jax

    from llava_jax import load

    workdir = demo["workdir"]
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
    for path, x in jax.tree_util.tree_leaves_with_path(tower.params["llm"]):
        x = np.asarray(x)
        if "scale" in jax.tree_util.keystr(path):
            np.testing.assert_array_equal(x, np.ones_like(x))
        else:
            assert 0.07 < x.std() < 0.09, jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def final_model(demo):
    from llava_jax import load

    return load(str(demo["workdir"] / "stage2" / "final"))


def test_hf_export_loads_with_same_logits(demo, final_model):
    import torch
    import transformers

    hf = transformers.LlavaForConditionalGeneration.from_pretrained(str(demo["workdir"] / "hf")).eval()
    config = final_model.config
    rng = np.random.default_rng(0)
    ids = np.concatenate([[1], np.full(config.image_seq_length, config.image_token_index), rng.integers(3, 700, 8)])
    ids = ids[None].astype(np.int64)
    pixels = rng.standard_normal((1, 3, config.vision.image_size, config.vision.image_size)).astype(np.float32)
    with torch.no_grad():
        expected = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels)).logits.numpy()
    np.testing.assert_allclose(final_model.logits(ids, pixels), expected, rtol=1e-4, atol=1e-4)


def test_chat_answers_are_the_final_models_greedy_tokens(demo, final_model):
    """Teacher-forced: each answer token is the argmax of the full-sequence logits after the tokens before it."""
    from PIL import Image

    from llava_jax.infer.chat import encode_batch
    from llava_jax.infer.generate import default_stop_ids

    chat = demo["first"]["chat/transcript.json"]
    assert chat["seed"] == SEED and len(chat["turns"]) == 4
    tok = final_model.tokenizer
    with Image.open(chat["image"]) as im:
        image = im.convert("RGB")
    rows, prompts, answers = [], [], []
    for turn in chat["turns"]:
        prompt, pixels, _ = encode_batch(final_model, [image], [turn["question"]])
        answer = tok(turn["answer"], add_special_tokens=False)["input_ids"]
        assert answer and tok.decode(answer, skip_special_tokens=True).strip() == turn["answer"]
        rows.append(np.concatenate([prompt[0], answer]))
        prompts.append(prompt.shape[1])
        answers.append(answer)
    # Right padding to one length (one compile): causal attention keeps it out of the real positions.
    ids = np.zeros((len(rows), max(map(len, rows))), np.int32)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = row
    logits = final_model.logits(ids, np.concatenate([pixels] * len(rows)))
    stop = set(default_stop_ids(final_model))
    for b, (start, answer) in enumerate(zip(prompts, answers)):
        for i, token in enumerate(answer):
            scores = logits[b, start + i - 1]
            # Cached decoding and the full sequence may differ by float rounding: a near-tie can go either way.
            assert scores[token] >= scores.max() - 1e-4, (b, i, tok.decode([token]), tok.decode([scores.argmax()]))
        if len(answer) < 64:  # ended by a stop token, not by max_new_tokens
            assert int(logits[b, start + len(answer) - 1].argmax()) in stop, b


def test_rerun_reuses_every_step_and_scores_the_saved_answers(demo):
    out = demo["rerun_out"]
    for step in STEPS[:-1]:
        assert f"[demo] {step}: " in out and "reused" in out.split(f"[demo] {step}: ")[1].split("\n")[0], step
    workdir = demo["workdir"]
    before, after = demo["first"]["timings.json"]["seconds"], _read(workdir / "timings.json")["seconds"]
    assert {k: after[k] for k in STEPS[:-1]} == {k: before[k] for k in STEPS[:-1]}
    # Same seed, same model: the same chat. The accuracy is that of the answers corrected on disk.
    assert _read(workdir / "chat" / "transcript.json") == demo["first"]["chat/transcript.json"]
    results = _read(workdir / "results.json")
    assert results["accuracy"] == pytest.approx(demo["expected_accuracy"])
    assert 0 < results["accuracy"]["overall"] < 100


def test_hd_quick_demo(venv, tmp_path):
    from llava_jax import load

    workdir = tmp_path / "demo_hd"
    printed = _demo(venv, workdir, "--hd", seed=3)
    assert "non-HD %" in printed and "HD %" in printed
    results = _read(workdir / "results.json")
    comparison = results["hd_comparison"]
    assert set(comparison) == {"color", "shape", "count", "position", "existence", "overall"}
    assert all(set(row) == {"non_hd", "hd", "chance"} for row in comparison.values())
    assert {r: comparison[r]["hd"] for r in comparison} == results["accuracy"]
    assert _read(workdir / "data" / "manifest.json")["image_size"] == 168
    for name in ("eval", "eval_hd"):
        assert len(_read(workdir / name / "predictions.jsonl")) == results["num_questions"]["overall"]
    # Both arms start from the same stage-1 model; only the HD one tiles its images.
    base, hd = load(str(workdir / "stage2" / "final")), load(str(workdir / "stage2hd" / "final"))
    assert base.config.anyres is None and hd.config.image_grid_pinpoints == ((168, 168),)
    assert hd.config.anyres.max_tiles == 10 and hd.params["projector"]["image_newline"].shape == (64,)
    stage1 = load(str(workdir / "stage1" / "final"))
    np.testing.assert_array_equal(
        np.asarray(hd.params["vision"]["patch_embedding"]), stage1.params["vision"]["patch_embedding"]
    )
    assert _read(workdir / "hf" / "config.json")["architectures"] == ["LlavaNextForConditionalGeneration"]
    assert len(_read(workdir / "chat" / "transcript.json")["turns"]) == 4
