"""Test fixtures' building blocks: a tiny LLaMA-style tokenizer, real photos, LLaVA JSON datasets."""

from __future__ import annotations

import json
import os
import random

import numpy as np

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
WORDS = [
    "the",
    "a",
    "an",
    "cat",
    "dog",
    "sits",
    "on",
    "mat",
    "what",
    "is",
    "this",
    "image",
    "color",
    "red",
    "blue",
    "green",
    "yes",
    "no",
    "there",
    "are",
    "two",
    "three",
    "people",
    "street",
    "car",
    "bus",
    "photo",
    "picture",
    "of",
    "in",
    "with",
    "and",
    "man",
    "woman",
    "holding",
    "table",
    "food",
    "plate",
    "describe",
    "detail",
    "scene",
    "many",
    "how",
    "where",
    "who",
    "why",
    "left",
    "right",
    "top",
    "bottom",
    "sky",
    "tree",
    "water",
    "building",
    "sign",
]


def write_tokenizer(directory: str, vocab_size: int = 512) -> str:
    """Trains a LLaMA-style SentencePiece BPE (byte fallback, digits split, BOS) into `directory`.

    Writes `tokenizer.model` and a Vicuna-like `tokenizer_config.json`; load it
    with `transformers.AutoTokenizer.from_pretrained(directory)`.
    """
    import sentencepiece as spm

    os.makedirs(directory, exist_ok=True)
    rng = random.Random(0)
    lines = [SYSTEM, "USER: ASSISTANT: USER: ASSISTANT:"] * 20
    for _ in range(3000):
        n = rng.randint(3, 15)
        lines.append(" ".join(rng.choice(WORDS) for _ in range(n)) + rng.choice([".", "?", "!", ","]))
    lines += ["Ünïcödé 日本語のテスト café naïve 12345 67890 émoji 🐱"] * 5
    corpus = os.path.join(directory, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=os.path.join(directory, "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=0.9995,
        minloglevel=2,
        num_threads=1,
    )
    os.remove(corpus)
    os.remove(os.path.join(directory, "tokenizer.vocab"))
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 4096,
        "padding_side": "right",
        "tokenizer_class": "LlamaTokenizer",
        "sp_model_kwargs": {},
    }
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return directory


def photos() -> list[np.ndarray]:
    """Real photos available offline (scikit-learn's sample images), uint8[H, W, 3]."""
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)


def random_sentence(rng: random.Random, lo: int = 3, hi: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def write_dataset(
    directory: str,
    n: int = 40,
    *,
    text_only_every: int = 4,
    seed: int = 0,
    image_sizes=((500, 375), (375, 500), (640, 427), (300, 300)),
    fmt: str = "json",
    stage: int = 2,
) -> tuple[str, str]:
    """A LLaVA-format dataset of `n` examples with JPEG images cut from real photos.

    Stage 2: multi-turn QA, every `text_only_every`-th example text-only.
    Stage 1: one caption per image. Returns `(json_path, image_root)`.
    """
    from PIL import Image

    rng = random.Random(seed)
    image_root = os.path.join(directory, "images")
    os.makedirs(image_root, exist_ok=True)
    base = photos()
    examples = []
    for i in range(n):
        text_only = stage == 2 and text_only_every and i % text_only_every == text_only_every - 1
        example = {"id": f"ex{i:04d}"}
        if not text_only:
            w, h = image_sizes[i % len(image_sizes)]
            photo = base[i % len(base)]
            y, x = rng.randint(0, photo.shape[0] - 1 - min(h, photo.shape[0] - 1)), 0
            crop = Image.fromarray(photo[y : y + h, x : x + w]).resize((w, h))
            name = f"{i % 7}/img{i:04d}.jpg"
            os.makedirs(os.path.join(image_root, str(i % 7)), exist_ok=True)
            crop.save(os.path.join(image_root, name), quality=90)
            example["image"] = name
        if stage == 1:
            example["conversations"] = [
                {"from": "human", "value": "<image>\nDescribe the image briefly."},
                {"from": "gpt", "value": random_sentence(rng)},
            ]
        else:
            turns = []
            for r in range(rng.randint(1, 4)):
                q = random_sentence(rng) + "?"
                if r == 0 and not text_only:
                    q = "<image>\n" + q if rng.random() < 0.5 else q + "\n<image>"
                turns += [
                    {"from": "human", "value": q},
                    {"from": "gpt", "value": random_sentence(rng, 1, 30)},
                ]
            example["conversations"] = turns
        examples.append(example)
    path = os.path.join(directory, "data." + fmt)
    with open(path, "w", encoding="utf-8") as f:
        if fmt == "jsonl":
            f.write("\n".join(json.dumps(e, ensure_ascii=False) for e in examples) + "\n")
        else:
            json.dump(examples, f, ensure_ascii=False, indent=1)
    return path, image_root
