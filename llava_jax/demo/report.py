"""The demo's evaluation, loss plot, chat and summary (see `llava_jax.demo`)."""

from __future__ import annotations

import json
import os
import random

import numpy as np

EVAL_MAX_NEW_TOKENS = 8  # short answers are one word and `</s>`
CHAT_MAX_NEW_TOKENS = 64
STAGE_TITLES = {
    "stage0a": "stage 0a tower",
    "stage0b": "stage 0b LLM",
    "stage1": "stage 1 projector",
    "stage2": "stage 2 instruct",
    "stage2hd": "stage 2 instruct, HD",
}


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True, disable=not enabled)


def prompt_length(model, question: str) -> int:
    """Tokens of the `vicuna_v1` generation prompt for `question` about one image."""
    from llava_jax.data.encode import tokenizer_image_token
    from llava_jax.infer.chat import build_prompt

    c = model.config
    ids = tokenizer_image_token(
        build_prompt(question, True),
        model.tokenizer,
        image_token_index=c.image_token_index,
        image_seq_length=c.max_image_tokens,  # anyres: the most an image can take
    )
    return len(ids)


def answer_questions(model, items: list[dict], image_root: str, *, batch_size: int, progress: bool) -> list[dict]:
    """Greedy `vicuna_v1` answers to held-out questions, in fixed-shape batches (one compilation).

    Returns:
      LLaVA answer records `{"question_id", "prompt", "text", "category", "answer"}` in item order.
    """
    from PIL import Image

    batch_size = max(1, min(batch_size, len(items)))
    # Every batch has the same rows and prompt length, so the generator compiles once.
    width = max(prompt_length(model, item["text"]) for item in items)
    out = []
    bar = _progress(len(items), "eval", progress)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        rows = chunk + [chunk[-1]] * (batch_size - len(chunk))
        images = []
        for item in rows:
            with Image.open(os.path.join(image_root, item["image"])) as im:
                images.append(im.convert("RGB"))
        answers = model.chat(
            images,
            [item["text"] for item in rows],
            template="vicuna_v1",
            max_new_tokens=EVAL_MAX_NEW_TOKENS,
            pad_to_multiple=width,
        )
        for item, text in zip(chunk, answers):
            out.append(
                {
                    "question_id": item["question_id"],
                    "prompt": item["text"],
                    "text": text,
                    "category": item["category"],
                    "answer": item["answer"],
                }
            )
        bar.update(len(chunk))
    bar.close()
    return out


def evaluate(
    model, eval_path: str, image_root: str, predictions_path: str, *, batch_size: int = 128, progress: bool = True
) -> dict:
    """Scores (`score_synthetic`) of `model` on the held-out split; answers cached in `predictions_path`."""
    from llava_jax.demo.synthetic import load_eval_items, score_synthetic

    items = load_eval_items(eval_path)
    records = None
    if os.path.exists(predictions_path):
        with open(predictions_path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        if {str(r["question_id"]) for r in records} != {str(i["question_id"]) for i in items}:
            records = None  # answers to another split: answer again
    if records is None:
        records = answer_questions(model, items, image_root, batch_size=batch_size, progress=progress)
        _write_atomic(predictions_path, "".join(json.dumps(r) + "\n" for r in records))
    return score_synthetic(records, items)


def read_losses(stage_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) of a stage's `metrics.jsonl`; a step logged twice (a resumed run) keeps its last value."""
    by_step: dict[int, float] = {}
    path = os.path.join(stage_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if "train/loss" in row:
                    by_step[int(row["step"])] = float(row["train/loss"])
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def _ema(values: np.ndarray, decay: float = 0.9) -> np.ndarray:
    out, acc = np.empty_like(values), values[0] if len(values) else 0.0
    for i, v in enumerate(values):
        acc = decay * acc + (1 - decay) * v if i else v
        out[i] = acc
    return out


def plot_losses(stage_dirs: dict[str, str], path: str) -> dict[str, dict]:
    """Loss curves of the stages side by side (one x axis, stages in order) -> PNG at `path`.

    Returns:
      per stage `{"steps", "first_loss", "last_loss"}` (last: mean of the final 10 steps).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    offset, summary = 0, {}
    for i, (name, directory) in enumerate(stage_dirs.items()):
        steps, losses = read_losses(directory)
        if not len(steps):
            continue
        x = steps + offset
        color = f"C{i}"
        ax.plot(x, losses, color=color, alpha=0.3, linewidth=0.8)
        ax.plot(x, _ema(losses), color=color, linewidth=1.8, label=STAGE_TITLES.get(name, name))
        if offset:
            ax.axvline(offset + 0.5, color="0.6", linestyle=":", linewidth=1)
        summary[name] = {
            "steps": int(steps[-1]),
            "first_loss": float(losses[0]),
            "last_loss": float(losses[-10:].mean()),
        }
        offset = int(x[-1])
    ax.set_xlabel("optimizer step (stages in sequence)")
    ax.set_ylabel("training loss (nats per supervised token)")
    ax.set_yscale("log")
    ax.set_title("llava-jax demo: synthetic shapes task")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return summary


def chat_about_fresh_image(model, seed: int, out_dir: str, *, image_size: int | None = None, shape_scale=1.0) -> dict:
    """Render a scene that is in no split (`random_scene(seed)`), ask about it, keep image and transcript.

    Drawn at the model's image size unless `image_size` (and `shape_scale`) say otherwise (`--hd`).
    """
    from llava_jax.demo.synthetic import (
        describe,
        make_question,
        random_scene,
        render_scene,
    )

    scene = random_scene(seed)
    image = render_scene(scene, image_size or model.config.vision.image_size, shape_scale)
    os.makedirs(out_dir, exist_ok=True)
    image_path = os.path.join(out_dir, f"image_{seed}.png")
    image.save(image_path)
    rng = random.Random(seed)
    turns = [("Describe the image in detail.", describe(scene))]
    for qtype in ("color", "existence", "count"):
        turns.append(make_question(scene, qtype, rng, short=True))
    answers = model.chat(image, [q for q, _ in turns], template="vicuna_v1", max_new_tokens=CHAT_MAX_NEW_TOKENS)
    transcript = {
        "seed": seed,
        "image": image_path,
        "turns": [{"question": q, "answer": a, "truth": t} for (q, t), a in zip(turns, answers)],
    }
    _write_atomic(os.path.join(out_dir, "transcript.json"), json.dumps(transcript, indent=2))
    return transcript


def read_json(path: str):
    """The JSON value in `path`, or None when there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_results(
    path: str,
    scores: dict,
    timings,
    curves: dict,
    *,
    model,
    quick: bool,
    tower_accuracy: dict | None = None,
    hd_comparison: dict | None = None,
) -> dict:
    """`results.json`: accuracy and chance per type (percent), minutes, per-step times, losses, model size;
    with `--hd` the HD model's scores and `hd_comparison` (`hd_comparison()`)."""
    import jax

    n_params = {k: int(sum(np.size(x) for x in jax.tree.leaves(v))) for k, v in model.params.items()}
    results = {
        "accuracy": scores["accuracy"],
        "chance": scores["chance"],
        "minutes": round(timings.total_minutes, 2),
        "num_questions": scores["num_questions"],
        "step_seconds": {k: round(v, 1) for k, v in timings.steps.items()},
        "losses": curves,
        "tower_held_out_accuracy": tower_accuracy,
        "parameters": n_params,
        "quick": quick,
        **({"hd_comparison": hd_comparison} if hd_comparison else {}),
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}, {os.cpu_count()} host CPUs",
    }
    _write_atomic(path, json.dumps(results, indent=2))
    return results


def hd_comparison(base: dict, hd: dict) -> dict:
    """`--hd`: held-out accuracy (percent) per question type of the non-HD and the HD stage 2, side by side."""
    return {
        qtype: {"non_hd": base["accuracy"][qtype], "hd": hd["accuracy"][qtype], "chance": hd["chance"][qtype]}
        for qtype in hd["accuracy"]
    }


def print_hd_comparison(comparison: dict) -> None:
    """The `--hd` table: the same held-out questions answered from 56-px images and from tiles."""
    print(f"{'held-out question type':<26}{'non-HD %':>10}{'HD %':>8}{'chance %':>10}")
    for qtype, row in comparison.items():
        print(f"{qtype:<26}{row['non_hd']:>10.1f}{row['hd']:>8.1f}{row['chance']:>10.1f}")


def print_summary(results: dict, timings, curves: dict, chat: dict, *, workdir: str, this_run_s: float) -> None:
    """The end-of-demo tables: stages, accuracy beside chance, the chat, where everything is."""
    line = "-" * 66
    print("\n" + line)
    print(f"{'step':<24}{'steps':>7}{'first loss':>12}{'last loss':>11}{'minutes':>9}  ")
    for name, seconds in timings.steps.items():
        c = curves.get(name, {})
        steps = f"{c['steps']:>7}" if c else f"{'':>7}"
        losses = f"{c['first_loss']:>12.3f}{c['last_loss']:>11.3f}" if c else f"{'':>23}"
        note = " (reused)" if name in timings.reused else ""
        print(f"{STAGE_TITLES.get(name, name):<24}{steps}{losses}{seconds / 60:>9.2f}{note}")
    print(line)
    print(f"{'held-out question type':<26}{'accuracy %':>12}{'chance %':>10}{'questions':>11}")
    for qtype, acc in results["accuracy"].items():
        print(f"{qtype:<26}{acc:>12.1f}{results['chance'][qtype]:>10.1f}{results['num_questions'][qtype]:>11}")
    if results.get("hd_comparison"):
        print(line)
        print_hd_comparison(results["hd_comparison"])
    print(line)
    print(f"chat about a fresh image ({chat['image']}):")
    for turn in chat["turns"]:
        question = turn["question"].split("\n")[0]
        print(f"  USER: {question}\n  ASSISTANT: {turn['answer']}\n  (truth: {turn['truth']})")
    print(line)
    print(f"total {results['minutes']:.1f} min of demo steps (this run {this_run_s / 60:.1f} min); {results['device']}")
    print(
        f"results {os.path.join(workdir, 'results.json')}, plot {os.path.join(workdir, 'loss.png')}, "
        f"model {os.path.join(workdir, 'stage2hd' if results.get('hd_comparison') else 'stage2', 'final')}, "
        f"HF {os.path.join(workdir, 'hf')}"
    )
    print(f"serve it: llava-jax serve --model {os.path.join(workdir, 'stage2', 'final')} --ui  (http://127.0.0.1:8000)")
