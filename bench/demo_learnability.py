"""How fast does the demo's LLM learn to answer questions about an image? (a diagnostic for issue 7)

  .venv/bin/python bench/demo_learnability.py workdir_demo/towers [--types color,existence]
      [--llm 2x64x4 --init-scale 4 --rope-theta 10000] [--lr 3e-3] [--steps 1500] [--describe]
      [--induction-steps 300] [--echo-steps 300] [--long-fraction 0.5] [--image-last] [--slot-words]

Starts from a demo checkpoint (its trained vision tower; with `--llm LxDxH` a fresh
LLaMA of that shape replaces its LLM), trains projector + LLM on single questions of
the given types (`vicuna_v1`, the stage-2 format; the type `detail` is "Describe the
image in detail." answered with the whole scene) and prints, every `--every` steps,
the held-out accuracy of the first answer token of short questions per type beside
chance. Count questions are learned in a few hundred steps; colour questions, which
need the question's referent bound to the image tokens, are not (see bench/RESULTS.md).
`--describe` puts the scene's text description in the prompt (the same task in pure
text); `--induction-steps N` first trains the LLM on N steps of repeated random token
sequences (induction heads); `--echo-steps N` first trains N steps on the same
questions as text only, answered with their key word ("Is there a red shape ...?" ->
"Red"); `--long-fraction F` gives a fraction F of the training questions sentence
answers ("The shape on the left is red.") and adds the probe `color-in-sentence`:
the colour word of such answers, two tokens after its referent; with the type
`detail`, the probe `detail-words` scores the colour, kind and slot words of held-out
descriptions (the dense signal that taught binding, see bench/RESULTS.md);
`--image-last` puts the image after the question; `--slot-words` writes the scene
into the prompt as "left red circle, top blue square" (a plain induction lookup).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llava_jax.api import load, random_model
from llava_jax.data.encode import encode_example
from llava_jax.data.image import preprocess_image
from llava_jax.demo.synthetic import (
    COLORS,
    DETAIL_INSTRUCTIONS,
    POSITIONS,
    SHAPES,
    describe,
    make_question,
    render_scene,
    sample_rng,
    sample_scene,
)
from llava_jax.demo.synthetic.evaluation import chance_levels
from llava_jax.demo.towers import scale_matrices
from llava_jax.model.llava import LlavaModel
from llava_jax.model.params import merge_trees
from llava_jax.train.partition import split
from llava_jax.train.step import batch_loss

CONTENT_WORDS = (*COLORS, *SHAPES, *POSITIONS)  # what a question refers to and a description binds


def key_word(question: str) -> str:
    """The first colour, kind or position word of a question, capitalised (the `--echo-steps` answer)."""
    for w in question.replace("?", " ").split():
        if w in CONTENT_WORDS:
            return w.capitalize()
    raise ValueError(f"no key word in {question!r}")


def question_set(
    model,
    types,
    split_name: str,
    n: int,
    *,
    describe_scene: bool,
    echo: bool = False,
    long_fraction: float = 0.0,
    image_last: bool = False,
    slot_words: bool = False,
    answer_word: int = 0,
    length: int = 160,
):
    """(batch, index of each answer's first token int32[n]) of n single-question conversations.

    batch: input_ids/labels/positions/segment_ids int32[n, length], images float32[n, 1, S, S, 3].
    `echo`: text only, and the answer is the question's key word (`key_word`).
    """
    c, size = model.config, model.config.vision.image_size
    ids = np.zeros((n, length), np.int32)
    labels = np.full((n, length), -100, np.int32)
    segments = np.zeros((n, length), np.int32)  # 1 on the sample, 0 on the padding
    images = np.zeros((n, 1, size, size, 3), np.float32)
    answer_at = np.zeros(n, np.int32)
    for i in range(n):
        rng = sample_rng(7, split_name, i)
        scene = sample_scene(rng)
        short = long_fraction == 0 or rng.random() >= long_fraction
        if types[i % len(types)] == "detail":  # dense binding: every shape's colour, kind and slot
            question, answer = DETAIL_INSTRUCTIONS[0], describe(scene)
        else:
            question, answer = make_question(scene, types[i % len(types)], rng, short=short)
        prompt = (describe(scene) + "\n" if describe_scene else "") + question
        if slot_words:  # the scene as "left red circle, top blue square": an induction head reads it
            prompt = ", ".join(f"{s.position} {s.color} {s.kind}" for s in scene.shapes) + "\n" + prompt
        prompt = prompt + "\n<image>" if image_last else "<image>\n" + prompt
        if echo:
            prompt, answer = question, key_word(question)
        turns = [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]
        record = {"id": str(i), "conversations": turns, **({} if echo else {"image": "-"})}
        e = encode_example(
            record,
            model.tokenizer,
            template="vicuna_v1",
            image_seq_length=c.image_seq_length,
            max_length=length,
            image_token_index=c.image_token_index,
        )
        t = len(e["input_ids"])
        ids[i, :t], labels[i, :t], segments[i, :t] = e["input_ids"], e["labels"], 1
        answer_at[i] = int(np.flatnonzero(np.asarray(e["labels"]) >= 0)[answer_word])
        images[i, 0] = preprocess_image(render_scene(scene, size), mode="pad", size=size)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), ids.shape)
    batch = {"input_ids": ids, "labels": labels, "positions": positions, "segment_ids": segments, "images": images}
    return batch, answer_at


def fresh_llm(model, shape: str, init_scale: float, rope_theta: float = 10000.0):
    """`model` with a random LLaMA `LxDxH` (layers x width x heads), its matrices scaled by `init_scale`."""
    layers, width, heads = map(int, shape.split("x"))
    llm = dataclasses.replace(
        model.config.llm,
        num_layers=layers,
        hidden_size=width,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=width // heads,
        intermediate_size=4 * width,
        rope_theta=rope_theta,
    )
    config = dataclasses.replace(
        model.config, llm=llm, projector=dataclasses.replace(model.config.projector, out_features=width)
    )
    fresh = random_model(config, seed=1, tokenizer=model.tokenizer)
    fresh.params["vision"] = model.params["vision"]
    fresh.params["llm"] = scale_matrices(fresh.params["llm"], init_scale)
    return fresh


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a demo model directory, e.g. workdir_demo/towers")
    p.add_argument("--types", default="color,existence")
    p.add_argument("--llm", default="", help="LxDxH: a fresh LLaMA of this shape instead of the checkpoint's")
    p.add_argument("--init-scale", type=float, default=1.0, help="scale of the fresh LLM's matrices (init std 0.02)")
    p.add_argument("--rope-theta", type=float, default=10000.0, help="the fresh LLM's RoPE base")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-train", type=int, default=30000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--describe", action="store_true", help="the scene's description in the prompt")
    p.add_argument("--induction-steps", type=int, default=0)
    p.add_argument("--long-fraction", type=float, default=0.0, help="training questions with sentence answers")
    p.add_argument("--slot-words", action="store_true", help='the scene as "left red circle, ..." in the prompt')
    p.add_argument("--image-last", action="store_true", help="the image after the question, not before")
    p.add_argument("--echo-steps", type=int, default=0, help="first train text-only: answer = the question's key word")
    a = p.parse_args()
    types = a.types.split(",")
    model = load(a.checkpoint)
    if a.llm:
        model = fresh_llm(model, a.llm, a.init_scale, a.rope_theta)
    config = model.config
    t0 = time.time()
    train, _ = question_set(
        model,
        types,
        "learn_train",
        a.num_train,
        describe_scene=a.describe,
        long_fraction=a.long_fraction,
        image_last=a.image_last,
        slot_words=a.slot_words,
    )
    test, answer_at = question_set(
        model, types, "learn_test", 300, describe_scene=a.describe, image_last=a.image_last, slot_words=a.slot_words
    )
    long_test = None
    if a.long_fraction:  # "The shape on the left is red." : the colour word, 3rd label token from the end
        long_test = question_set(
            model,
            ["color"],
            "learn_test",
            300,
            describe_scene=a.describe,
            long_fraction=1.0,
            image_last=a.image_last,
            slot_words=a.slot_words,
            answer_word=-3,
        )
    print(f"{a.num_train} training questions built in {time.time() - t0:.0f}s", flush=True)

    trainable, frozen = split(model.params, ["^projector/", "^llm/"])
    loss_fn = functools.partial(batch_loss, config=config, freeze_vision=True, chunk=256)

    def make_step(optimizer):
        @jax.jit
        def step(trainable, opt_state, batch, key):
            def mean_nll(t):
                total, count = loss_fn(t, frozen, batch, key)
                return total / jnp.maximum(count, 1)

            loss, grads = jax.value_and_grad(mean_nll)(trainable)
            updates, opt_state = optimizer.update(grads, opt_state, trainable)
            return optax.apply_updates(trainable, updates), opt_state, loss

        return step

    @jax.jit
    def predict(trainable, batch):
        logits, _ = LlavaModel(config).apply(
            {"params": merge_trees(trainable, frozen)},
            batch["input_ids"],
            batch["images"],
            positions=batch["positions"],
            segment_ids=batch["segment_ids"],
        )
        return jnp.argmax(logits, -1)

    def right_at(tokens: np.ndarray, batch, at) -> np.ndarray:
        """bool[n]: is the predicted (`tokens` int32[n, T]) token at index `at` (int32[n]) right?"""
        rows = np.arange(len(at))
        return tokens[rows, at - 1] == batch["input_ids"][rows, at]

    content_ids = model.tokenizer.convert_tokens_to_ids(["\u2581" + w for w in CONTENT_WORDS])

    def accuracy(trainable) -> str:
        tokens = np.asarray(predict(trainable, test))
        right = right_at(tokens, test, answer_at)
        scored = [(i, t) for i, t in enumerate(types) if t != "detail"]  # a description has no short answer
        text = " ".join(f"{t}={right[i :: len(types)].mean():.2f}" for i, t in scored)
        if long_test is not None:
            in_sentence = right_at(np.asarray(predict(trainable, long_test[0])), *long_test)
            text += f" color-in-sentence={in_sentence.mean():.2f}"
        if "detail" in types:  # next-token accuracy on the content words of the held-out descriptions
            rows = np.arange(types.index("detail"), len(answer_at), len(types))
            ids = test["input_ids"][rows]
            scored_at = (test["labels"][rows, 1:] >= 0) & np.isin(ids[:, 1:], content_ids)
            text += f" detail-words={(tokens[rows, :-1] == ids[:, 1:])[scored_at].mean():.2f}"
        return text

    rng, key = np.random.default_rng(0), jax.random.PRNGKey(0)
    if a.induction_steps:
        schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, 10, a.induction_steps, 1e-4)
        optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))
        step, opt_state, half = make_step(optimizer), optimizer.init(trainable), 24
        for i in range(1, a.induction_steps + 1):
            chunk = rng.integers(3, config.image_token_index, (64, half))
            ids = np.concatenate([np.ones((64, 1), int), chunk, chunk], 1).astype(np.int32)
            labels = ids.copy()
            labels[:, : half + 2] = -100
            batch = {
                "input_ids": ids,
                "labels": labels,
                "positions": np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape),
                "segment_ids": np.ones_like(ids),
            }
            trainable, opt_state, loss = step(trainable, opt_state, batch, key)
            if i % 50 == 0:
                print(f"induction step {i} loss {float(loss):.3f}", flush=True)

    if a.echo_steps:
        echo_types = [t for t in types if t != "count"]  # count questions name no colour, kind or position
        if not echo_types:
            p.error("--echo-steps needs a question type other than count")
        echo, _ = question_set(model, echo_types, "learn_echo", 5000, describe_scene=False, echo=True)
        echo.pop("images")
        optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(a.lr, weight_decay=0.0))
        step, opt_state = make_step(optimizer), optimizer.init(trainable)
        for i in range(1, a.echo_steps + 1):
            rows = rng.integers(0, 5000, a.batch_size)
            trainable, opt_state, loss = step(trainable, opt_state, {k: v[rows] for k, v in echo.items()}, key)
            if i % 50 == 0:
                print(f"echo step {i} loss {float(loss):.3f}", flush=True)

    schedule = optax.warmup_cosine_decay_schedule(0.0, a.lr, 10, a.steps, a.lr * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
    step, opt_state = make_step(optimizer), optimizer.init(trainable)
    chance = chance_levels()
    print("chance " + " ".join(f"{t}={chance[t] / 100:.2f}" for t in types if t in chance), flush=True)
    for i in range(1, a.steps + 1):
        rows = rng.integers(0, a.num_train, a.batch_size)
        batch = {k: v[rows] for k, v in train.items()}
        trainable, opt_state, loss = step(trainable, opt_state, batch, jax.random.fold_in(key, i))
        if i % a.every == 0:
            elapsed = time.time() - t0
            print(f"step {i} loss {float(loss):.3f} held-out {accuracy(trainable)} ({elapsed:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
