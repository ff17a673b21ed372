"""LLaVA-format samples of the synthetic task and the writer of a whole dataset.

Every sample is drawn from its own `random.Random` seeded by `(seed, split,
index)`: a sample does not depend on how many others are generated, the splits
never share a stream, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence

from PIL import Image

from llava_jax.demo.synthetic.language import (
    CAPTION_INSTRUCTIONS,
    DETAIL_INSTRUCTIONS,
    QUESTION_TYPES,
    caption,
    describe,
    make_question,
    text_only_round,
)
from llava_jax.demo.synthetic.scene import Scene, render_scene, sample_rng, sample_scene

# Share of image rounds that ask for the detailed description. Descriptions bind every shape's
# colour, kind and slot word by word: the dense signal from which a small LLM learns to read one
# image token by its content, which single-word answers alone teach too slowly (bench/RESULTS.md).
DETAIL_FRACTION = 0.35
# Stage-2 question types are drawn with these weights (the held-out split stays
# balanced): count is learned in a few hundred steps, while colour and
# existence need a shape found by its content, which is learned slowly. Colour at 5 scored
# worse in one run (colour 72, existence 43; bench/RESULTS.md, session 5).
QUESTION_WEIGHTS = {"color": 3, "shape": 2, "count": 1, "position": 2, "existence": 4}
# Descriptions are drawn in these styles (`language.describe`): slot order and "place first"
# supervise reading a shape by its place, "shuffled" by its colour, "kind first" by its kind.
DESCRIPTION_STYLE_WEIGHTS = {"slot_order": 1, "shuffled": 1, "place_first": 1, "kind_first": 1}
# Rounds per image sample are drawn from 1..MAX_ROUNDS. Up to 5 (more questions per image, as in
# mix665k's VQA samples) scored far worse in one demo run (colour 48, existence 53 against 80, 99
# with 3; bench/RESULTS.md, session 5); fewer images per packed row and step is the likely cause.
MAX_ROUNDS = 3


def _turns(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    out = []
    for question, answer in pairs:
        out += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return out


def _with_image(text: str, rng: random.Random) -> str:
    # The real data has both placements; training moves `<image>` to the front anyway.
    return f"<image>\n{text}" if rng.random() < 0.6 else f"{text}\n<image>"


def caption_sample(index: int, *, seed: int = 0, image_ext: str = "png") -> tuple[dict, Scene]:
    """Stage-1 sample `index`: `({"id", "image", "conversations"}, scene)`, LCS-558K layout."""
    rng = sample_rng(seed, "stage1", index)
    scene = sample_scene(rng)
    sample_id = f"{index:09d}"
    human = _with_image(rng.choice(CAPTION_INSTRUCTIONS), rng)
    record = {
        "id": sample_id,
        "image": f"stage1/{sample_id}.{image_ext}",
        "conversations": _turns([(human, caption(scene, rng))]),
    }
    return record, scene


def instruct_sample(
    index: int,
    *,
    seed: int = 0,
    text_only: bool = False,
    image_ext: str = "png",
    detail_fraction: float = DETAIL_FRACTION,
    description_styles: dict[str, float] | None = DESCRIPTION_STYLE_WEIGHTS,
    question_weights: dict[str, float] | None = QUESTION_WEIGHTS,
    max_rounds: int = MAX_ROUNDS,
) -> tuple[dict, Scene | None]:
    """Stage-2 sample `index`: `(record, scene)` in the mix665k layout.

    Text-only records have no `"image"` and scene None.

    An image sample has 1-`max_rounds` rounds, each the detailed description (probability
    `detail_fraction`, in a style drawn with `description_styles`, slot order
    only when None) or else a question whose type is drawn with
    `question_weights` (uniform when None), 60% short (with `SHORT_ANSWER_SUFFIX`);
    `<image>` is in the first human turn only.
    """
    rng = sample_rng(seed, "stage2", index)
    if text_only:
        pairs = [text_only_round(rng) for _ in range(rng.randint(1, 2))]
        return {"id": f"text_{index:06d}", "conversations": _turns(pairs)}, None
    scene = sample_scene(rng)
    pairs = []
    for _ in range(rng.randint(1, max_rounds)):
        if rng.random() < detail_fraction:
            instruction = rng.choice(DETAIL_INSTRUCTIONS)
            style = "slot_order"
            if description_styles is not None:
                style = rng.choices(list(description_styles), list(description_styles.values()))[0]
            pairs.append((instruction, describe(scene, rng, style)))
        else:
            if question_weights is None:
                qtype = rng.choice(QUESTION_TYPES)
            else:
                qtype = rng.choices(QUESTION_TYPES, [question_weights[t] for t in QUESTION_TYPES])[0]
            pairs.append(make_question(scene, qtype, rng, short=rng.random() < 0.6))
    pairs[0] = (_with_image(pairs[0][0], rng), pairs[0][1])
    sample_id = f"{index:012d}"
    record = {
        "id": sample_id,
        "image": f"stage2/{sample_id}.{image_ext}",
        "conversations": _turns(pairs),
    }
    return record, scene


def eval_item(index: int, *, seed: int = 0, image_ext: str = "png") -> tuple[dict, Scene]:
    """Held-out question `index`: `({"question_id", "image", "text", "category", "answer"}, scene)`.

    `text` is a short question ending in `SHORT_ANSWER_SUFFIX` (as in LLaVA's
    question files); `category` cycles through `QUESTION_TYPES` so the types
    are balanced; `answer` is the ground truth.
    """
    rng = sample_rng(seed, "eval", index)
    scene = sample_scene(rng)
    qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    question, answer = make_question(scene, qtype, rng, short=True)
    record = {
        "question_id": index,
        "image": f"eval/{index:06d}.{image_ext}",
        "text": question,
        "category": qtype,
        "answer": answer,
    }
    return record, scene


def _is_text_only(index: int, fraction: float) -> bool:
    # Evenly spaced, so any prefix of the split has its share of text-only samples.
    return int((index + 1) * fraction) > int(index * fraction)


_FORMATS = {"png": "PNG", "jpg": "JPEG"}


def _write_bytes(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _save_image(image: Image.Image, path: str, ext: str) -> None:
    kwargs = {"quality": 95} if ext == "jpg" else {}
    image.save(path, format=_FORMATS[ext], **kwargs)


def synthetic_dataset_paths(out_dir: str | os.PathLike) -> dict[str, str]:
    """Where `write_synthetic_dataset(out_dir)` puts its files (computed, nothing is read or written).

    Returns:
      absolute paths: `captions` (stage-1 JSON), `qa` (stage-2 JSON), `eval`
      (held-out question JSONL), `image_root` (the folder the JSON `image`
      fields are relative to) and `manifest`.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    return {
        "captions": os.path.join(out_dir, "stage1_captions.json"),
        "qa": os.path.join(out_dir, "stage2_instruct.json"),
        "eval": os.path.join(out_dir, "eval_questions.jsonl"),
        "image_root": os.path.join(out_dir, "images"),
        "manifest": os.path.join(out_dir, "manifest.json"),
    }


# Bumped whenever the generator's output changes, so datasets written by an older one are regenerated.
GENERATOR_VERSION = 2


def _manifest(num_captions, num_qa, num_eval, image_size, seed, text_only_fraction, image_format, shape_scale):
    extra = {} if shape_scale == 1.0 else {"shape_scale": shape_scale}  # datasets of scale 1 stay current
    return {
        **extra,
        "generator": "llava_jax.demo.synthetic",
        "version": GENERATOR_VERSION,
        "num_captions": num_captions,
        "num_qa": num_qa,
        "num_eval": num_eval,
        "image_size": image_size,
        "seed": seed,
        "text_only_fraction": text_only_fraction,
        "image_format": image_format,
    }


def _read_manifest(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def synthetic_dataset_is_current(
    out_dir: str | os.PathLike,
    *,
    num_captions: int = 2000,
    num_qa: int = 4000,
    num_eval: int = 500,
    image_size: int = 84,
    seed: int = 0,
    text_only_fraction: float = 0.1,
    image_format: str = "png",
    shape_scale: float = 1.0,
) -> bool:
    """Whether `out_dir` holds a finished dataset that `write_synthetic_dataset` with these arguments would reuse.

    False for a missing or partial dataset, other arguments, or one written by
    an older generator (`GENERATOR_VERSION`).
    """
    paths = synthetic_dataset_paths(out_dir)
    manifest = _manifest(
        num_captions, num_qa, num_eval, image_size, seed, text_only_fraction, image_format, shape_scale
    )
    return _read_manifest(paths["manifest"]) == manifest


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    num_captions: int = 2000,
    num_qa: int = 4000,
    num_eval: int = 500,
    image_size: int = 84,
    seed: int = 0,
    text_only_fraction: float = 0.1,
    image_format: str = "png",
    shape_scale: float = 1.0,
) -> dict[str, str]:
    """Writes the task as LLaVA data files under `out_dir`; reuses a finished identical dataset.

    Layout: `images/{stage1,stage2,eval}/*.{png,jpg}` (RGB, `image_size` square),
    `stage1_captions.json` (list, LCS-558K layout), `stage2_instruct.json`
    (list, mix665k layout, `text_only_fraction` of samples without image),
    `eval_questions.jsonl` (LLaVA question file plus `category`/`answer`), and
    `manifest.json` (the arguments; written last, so its presence marks a
    complete dataset and a rerun with the same arguments writes nothing).
    `shape_scale` < 1 draws smaller shapes (`render_scene`; the `--hd` demo).

    Returns:
      `synthetic_dataset_paths(out_dir)`.
    """
    if image_format not in _FORMATS:
        raise ValueError(f"image_format must be one of {sorted(_FORMATS)}, got {image_format!r}")
    if not 0.0 <= text_only_fraction < 1.0:
        raise ValueError(f"text_only_fraction must be in [0, 1), got {text_only_fraction}")
    paths = synthetic_dataset_paths(out_dir)
    manifest = _manifest(
        num_captions, num_qa, num_eval, image_size, seed, text_only_fraction, image_format, shape_scale
    )
    if _read_manifest(paths["manifest"]) == manifest:
        return paths
    if os.path.exists(paths["manifest"]):
        os.remove(paths["manifest"])  # different arguments or generator: regenerate everything
    for split in ("stage1", "stage2", "eval"):
        os.makedirs(os.path.join(paths["image_root"], split), exist_ok=True)

    def save(record: dict, scene: Scene) -> None:
        image_path = os.path.join(paths["image_root"], record["image"])
        _save_image(render_scene(scene, image_size, shape_scale), image_path, image_format)

    stage1 = []
    for i in range(num_captions):
        record, scene = caption_sample(i, seed=seed, image_ext=image_format)
        save(record, scene)
        stage1.append(record)
    stage2 = []
    for i in range(num_qa):
        text_only = _is_text_only(i, text_only_fraction)
        record, scene = instruct_sample(i, seed=seed, text_only=text_only, image_ext=image_format)
        if scene is not None:
            save(record, scene)
        stage2.append(record)
    lines = []
    for i in range(num_eval):
        record, scene = eval_item(i, seed=seed, image_ext=image_format)
        save(record, scene)
        lines.append(json.dumps(record) + "\n")
    _write_bytes(paths["captions"], json.dumps(stage1, indent=2).encode())
    _write_bytes(paths["qa"], json.dumps(stage2, indent=2).encode())
    _write_bytes(paths["eval"], "".join(lines).encode())
    _write_bytes(paths["manifest"], json.dumps(manifest, indent=2).encode())
    return paths
