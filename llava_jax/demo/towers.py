"""Demo stage 0a: pretrain the small vision tower to say what is where (a stand-in for CLIP pretraining).

LLaVA starts from a pretrained CLIP tower; the demo's tower starts random, so
it is first trained as a classifier on the synthetic scenes. Two sets of
linear heads read the LLaVA-selected patch features:

* per patch token (one head shared by all tokens): the colour, kind and slot
  of the shape covering most of the patch, or background. A shared head makes
  every token carry its own content *and* where it is, so the LLM can later
  find "the shape on the left" by content instead of by counting positions;
* per image (on the flattened tokens): each slot's colour and kind (or empty)
  and the shape count.

The labels come from the generator's scenes of the stage-1 split (the images
stage 1 trains on); the held-out split is never trained on. The result is a
LLaVA checkpoint (tower trained, projector and LLM random) that stage 0b
starts from; stage 0b also writes the language mix (`write_language_mix`).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from llava_jax.config import LlavaConfig
from llava_jax.model.vision import VisionTower

NUM_SLOTS = 5
IMAGE_HEADS = (7,) * NUM_SLOTS + (5,) * NUM_SLOTS + (4,)  # slot colours, slot kinds, count
TOKEN_HEADS = (7, 5, 1 + NUM_SLOTS)  # colour, kind, slot of the patch's shape (0: background)
MIN_COVER = 0.08  # a patch belongs to a shape covering at least this fraction of it


def scene_labels(scene, image_size: int, patch_size: int) -> np.ndarray:
    """int32[len(IMAGE_HEADS) + 3 * P]: the image labels, then (colour, kind, slot) per patch, 0 = none."""
    from llava_jax.demo.synthetic import COLORS, POSITIONS, SHAPES, render_scene

    slots, colors = list(POSITIONS), list(COLORS)
    per_slot = np.zeros((2, NUM_SLOTS), np.int32)
    g, p = image_size // patch_size, patch_size
    cover = np.zeros((max(1, len(scene.shapes)), g * g))
    for i, s in enumerate(scene.shapes):
        per_slot[:, slots.index(s.position)] = (1 + colors.index(s.color), 1 + SHAPES.index(s.kind))
        alone = dataclasses.replace(scene, shapes=(s,), background_rgb=(0, 0, 0), gradient=0)
        mask = np.asarray(render_scene(alone, image_size)).any(-1)[: g * p, : g * p]
        cover[i] = mask.reshape(g, p, g, p).mean((1, 3)).reshape(-1)
    tokens = np.zeros((g * g, 3), np.int32)
    best = cover.argmax(0)
    for t in range(g * g):
        if scene.shapes and cover[best[t], t] >= MIN_COVER:
            s = scene.shapes[best[t]]
            tokens[t] = (1 + colors.index(s.color), 1 + SHAPES.index(s.kind), 1 + slots.index(s.position))
    image = np.concatenate([per_slot.reshape(-1), [len(scene.shapes) - 1]])
    return np.concatenate([image, tokens.reshape(-1)]).astype(np.int32)


class TowerClassifier(nn.Module):
    """The LLaVA vision tower (as LLaVA runs it) with per-token and per-image linear heads."""

    config: LlavaConfig

    @nn.compact
    def __call__(self, images):
        """images float32[B, S, S, 3] -> (image logits [B, sum(IMAGE_HEADS)], token logits [B, P, sum(TOKEN_HEADS)])."""
        c = self.config
        states = VisionTower(c.vision, num_layers_to_run=c.vision_layers_used, name="vision")(images, c.feature_layers)
        features = nn.LayerNorm(name="head_norm")(states[0][:, 1:])  # the patch tokens LLaVA projects
        image = nn.Dense(sum(IMAGE_HEADS), name="image_head")(features.reshape(features.shape[0], -1))
        return image, nn.Dense(sum(TOKEN_HEADS), name="token_head")(features)


def _heads(logits, labels, sizes):
    """Mean cross entropy and accuracy [len(sizes)] of consecutive heads along the last axis."""
    loss, correct, start = 0.0, [], 0
    for i, n in enumerate(sizes):
        part = logits[..., start : start + n]
        loss += optax.softmax_cross_entropy_with_integer_labels(part, labels[..., i]).mean()
        correct.append((jnp.argmax(part, -1) == labels[..., i]).mean())
        start += n
    return loss / len(sizes), jnp.stack(correct)


def _loss(params, module, images, labels):
    image_logits, token_logits = module.apply({"params": params}, images)
    n = len(IMAGE_HEADS)
    tokens = labels[:, n:].reshape(labels.shape[0], -1, len(TOKEN_HEADS))
    image_loss, image_acc = _heads(image_logits, labels[:, :n], IMAGE_HEADS)
    token_loss, token_acc = _heads(token_logits, tokens, TOKEN_HEADS)
    return image_loss + token_loss, jnp.concatenate([image_acc, token_acc])


def _summary(acc) -> dict:
    acc = np.asarray(acc)
    n = len(IMAGE_HEADS)
    return {
        "color_acc": float(acc[:NUM_SLOTS].mean()),
        "kind_acc": float(acc[NUM_SLOTS : 2 * NUM_SLOTS].mean()),
        "count_acc": float(acc[n - 1]),
        "token_color_acc": float(acc[n]),
        "token_kind_acc": float(acc[n + 1]),
        "token_slot_acc": float(acc[n + 2]),
    }


def training_set(num: int, image_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images float32[N, S, S, 3] preprocessed as stage 1 does, `scene_labels` int32[N, L]) of the stage-1 split."""
    from llava_jax.data.image import preprocess_image
    from llava_jax.demo.synthetic import caption_sample, render_scene

    images, labels = [], []
    for i in range(num):
        _, scene = caption_sample(i, seed=seed)
        images.append(preprocess_image(render_scene(scene, image_size), mode="square", size=image_size))
        labels.append(scene_labels(scene, image_size, 14))
    return np.stack(images).astype(np.float32), np.stack(labels)


def pretrain_tower(
    config: LlavaConfig,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    progress: bool = True,
    log=None,
    every: int = 10,
) -> tuple[dict, dict]:
    """Train the tower and heads with AdamW (warmup + cosine); `log(step, metrics)` every `every` steps.

    Returns:
      (`{"vision": tower params, "head": ..., "head_norm": ...}`, the last logged metrics).
    """
    module = TowerClassifier(config)
    params = module.init(jax.random.PRNGKey(seed), jnp.asarray(images[:1]))["params"]
    params = nn.meta.unbox(params)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps, lr * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))
    opt_state = optimizer.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        (loss, acc), grads = jax.value_and_grad(_loss, has_aux=True)(params, module, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, acc

    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    bar = tqdm(range(steps), desc="tower", dynamic_ncols=True, disable=not progress)
    metrics = {}
    for i in bar:
        idx = rng.integers(0, len(images), batch_size)
        params, opt_state, loss, acc = step(params, opt_state, images[idx], labels[idx])
        if i % every == 0 or i == steps - 1:
            metrics = {"loss": float(loss), **_summary(acc)}
            bar.set_postfix(
                loss=f"{metrics['loss']:.3f}",
                color=f"{metrics['token_color_acc']:.2f}",
                kind=f"{metrics['token_kind_acc']:.2f}",
                slot=f"{metrics['token_slot_acc']:.2f}",
            )
            if log is not None:
                log(i + 1, metrics)
    return jax.device_get(params), metrics


def held_out_set(num: int, image_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the first `num` held-out scenes, to report the tower's accuracy."""
    from llava_jax.data.image import preprocess_image
    from llava_jax.demo.synthetic import eval_item, render_scene

    scenes = [eval_item(i, seed=seed)[1] for i in range(num)]
    images = [preprocess_image(render_scene(s, image_size), mode="square", size=image_size) for s in scenes]
    return np.stack(images).astype(np.float32), np.stack([scene_labels(s, image_size, 14) for s in scenes])


def tower_accuracy(config: LlavaConfig, params: dict, images: np.ndarray, labels: np.ndarray) -> dict:
    """Held-out accuracy of the heads: per image slot colour, slot kind, count; per token colour, kind, slot."""
    _, acc = jax.jit(functools.partial(_loss, module=TowerClassifier(config)))(
        params, images=jnp.asarray(images), labels=jnp.asarray(labels)
    )
    return _summary(acc)


def scale_matrices(params: dict, scale: float) -> dict:
    """`params` with every weight matrix and embedding times `scale`; norm scales (`.../scale`) unchanged.

    The demo starts its small LLM at 4 x LLaMA's std 0.02, the scale of the
    learnability runs in bench/RESULTS.md ("The demo"); at 0.02 it learned more
    slowly there.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x if "scale" in jax.tree_util.keystr(path) else x * scale, params
    )


def run_tower_stage(cfg, out_dir: str, tokenizer_path: str, *, progress: bool = True) -> dict:
    """Stage 0a: train the tower classifier (`cfg`: configs/demo.py:stage0a) and write `out_dir/init`.

    `out_dir/init` is a LLaVA checkpoint with the trained tower and a random
    projector and LLM (the LLM's matrices at `cfg.llm_init_scale` x std 0.02;
    stage 0b's initial weights); `out_dir/metrics.jsonl`
    holds the training curve, `out_dir/accuracy.json` the held-out accuracy.
    """
    import json
    import os

    from llava_jax.api import load_tokenizer, random_model
    from llava_jax.presets import PRESETS

    config = PRESETS[cfg.preset]()
    size = config.vision.image_size
    if size != cfg.synthetic.image_size:
        raise ValueError(f"preset {cfg.preset} takes {size}px images, the data has {cfg.synthetic.image_size}px")
    images, labels = training_set(cfg.num_images, size, seed=cfg.synthetic.seed)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.jsonl"), "w") as f:
        write = lambda step, m: (f.write(json.dumps({"step": step, "train/loss": m["loss"], **m}) + "\n"), f.flush())
        params, _ = pretrain_tower(
            config,
            images,
            labels,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=cfg.seed,
            progress=progress,
            log=write,
            every=1,
        )
    held = held_out_set(min(500, cfg.synthetic.num_eval), size, seed=cfg.synthetic.seed)
    accuracy = tower_accuracy(config, params, *held)
    with open(os.path.join(out_dir, "accuracy.json"), "w") as f:
        json.dump(accuracy, f, indent=2)
    model = random_model(config, seed=cfg.seed, tokenizer=load_tokenizer(tokenizer_path))
    model.params["vision"] = params["vision"]
    model.params["llm"] = scale_matrices(model.params["llm"], cfg.llm_init_scale)
    model.save(os.path.join(out_dir, "init"))
    return accuracy


def make_towers(stage0_final: str, out_dir: str, seed: int = 0) -> None:
    """Stage 0's vision tower and LLM with a freshly initialised projector, as LLaVA's stage 1 starts."""
    from llava_jax.api import load
    from llava_jax.convert.loaders import init_projector

    model = load(stage0_final)
    model.params["projector"] = init_projector(model.config, jax.random.PRNGKey(seed + 1))
    model.save(out_dir)


def strip_image(record: dict) -> dict:
    """A LLaVA conversation record as text only: no `"image"` key, no `<image>` marker."""
    from llava_jax.data.conversation import IMAGE_TOKEN

    turns = [{**t, "value": t["value"].replace(IMAGE_TOKEN, "").strip()} for t in record["conversations"]]
    return {"id": f"text_{record['id']}", "conversations": turns}


def write_language_mix(captions_json: str, qa_json: str, out_json: str) -> str:
    """Stage 0b's data: the captions with their images plus the stage-2 conversations as text only.

    The LLM learns the task's language (and to read image tokens from
    captions) before LLaVA's stages; it never sees a question about an image.
    """
    import json
    import os

    with open(captions_json) as f:
        records = json.load(f)
    with open(qa_json) as f:
        records += [strip_image(r) for r in json.load(f)]
    tmp = out_json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(records, f)
    os.replace(tmp, out_json)
    return out_json
