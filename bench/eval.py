"""Evaluation throughput: questions/s at batch 1 (the reference's setting) and larger batches.

The whole evaluation path is timed, as `llava-jax eval` runs it: JPEG decoding,
LLaVA `pad` preprocessing, prompt rendering and tokenisation (overlapped with
the model on worker threads), batched greedy generation, decoding and the
resumable answer file. Model: the `bench-small` shape with random weights.
Workload: POPE-style short-answer questions (`vicuna_v1` system prompt, one
640x480 photo-sized image, the short-answer instruction) and 4 new tokens per
answer, about what a one-word answer plus EOS costs. Prompts are tokenised by
a word-level stand-in for the Vicuna tokenizer (one id per word or mark, so
prompt lengths are realistic without shipping a tokenizer). Each batch size
runs once untimed (compilation) before the timed run.

Run: `.venv/bin/python bench/eval.py [--batches 1 8 32] [--questions 64]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
from PIL import Image

import llava_jax
from llava_jax.eval import DataConfig, evaluate
from llava_jax.eval.model_answerer import ModelAnswerer
from llava_jax.presets import bench_small

OBJECTS = ("dog", "cat", "car", "bus", "cup", "fork", "tree", "kite", "chair", "person")


class WordTokenizer:
    """Vicuna-tokenizer stand-in: BOS, then one id per word or punctuation mark."""

    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = None

    def __call__(self, text: str, return_offsets_mapping: bool = False) -> dict:
        words = re.findall(r"\w+|[^\w\s]", text)
        return {"input_ids": [1] + [3 + zlib.crc32(w.encode()) % 31000 for w in words]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(f"w{i}" for i in ids if i > 2)


def write_questions(directory: str, n: int, seed: int = 0) -> str:
    """A POPE folder in LLaVA's layout: `n` questions on `n` random 640x480 JPEGs."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(directory, "val2014"), exist_ok=True)
    with open(os.path.join(directory, "llava_pope_test.jsonl"), "w") as f:
        for i in range(n):
            name = f"COCO_val2014_{i:012d}.jpg"
            pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(directory, "val2014", name), quality=90)
            text = (
                f"Is there a {OBJECTS[i % len(OBJECTS)]} in the image?\n"
                "Answer the question using a single word or phrase."
            )
            f.write(
                json.dumps(
                    {
                        "question_id": i,
                        "image": name,
                        "text": text,
                        "category": "random",
                    }
                )
                + "\n"
            )
    os.makedirs(os.path.join(directory, "coco"), exist_ok=True)
    with open(os.path.join(directory, "coco", "coco_pope_random.json"), "w") as f:
        for i in range(n):
            f.write(json.dumps({"question_id": i, "label": "yes" if i % 2 else "no"}) + "\n")
    return directory


def host_rate(answerer: ModelAnswerer, data_dir: str, questions: int) -> float:
    """Questions/s of the CPU side alone (image decoding, preprocessing, tokenising)."""
    from concurrent.futures import ThreadPoolExecutor

    from llava_jax.eval.registry import BENCHMARKS
    from llava_jax.eval.runner import IMAGE_THREADS, _requests, make_batches

    items = BENCHMARKS["pope"].load(DataConfig(data_dir, limit=questions))
    start = time.perf_counter()
    with ThreadPoolExecutor(IMAGE_THREADS) as workers:
        for batch in make_batches(items, answerer.batch_size):
            answerer.prepare(_requests(batch, "vicuna_v1", 4, workers))
    return len(items) / (time.perf_counter() - start)


def measure(model, data_dir: str, out_root: str, batch: int, questions: int, new_tokens: int) -> dict:
    """Untimed warm-up (one batch), then the timed run over `questions`."""
    answerer = ModelAnswerer(model, model_id="bench-small", batch_size=batch, length_multiple=64)
    evaluate(
        "pope",
        answerer,
        DataConfig(data_dir, limit=batch),
        os.path.join(out_root, f"warm{batch}"),
        batch_size=batch,
        max_new_tokens=new_tokens,
        progress=False,
    )
    r = evaluate(
        "pope",
        answerer,
        DataConfig(data_dir, limit=questions),
        os.path.join(out_root, f"run{batch}"),
        batch_size=batch,
        max_new_tokens=new_tokens,
        progress=False,
    )
    t = r["throughput"]
    host = host_rate(answerer, data_dir, questions)
    return {
        "host_questions_per_second": host,
        "batch": batch,
        "questions": t["answered_this_run"],
        "seconds": t["seconds"],
        "questions_per_second": t["questions_per_second"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument(
        "--dtype",
        default=None,
        help="model dtype (default bfloat16 on accelerators, float32 on CPU)",
    )
    parser.add_argument(
        "--attention",
        default="auto",
        help="attention implementation (xla, cudnn, pallas_gpu, splash, auto)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    backend = jax.default_backend()
    dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
    config = bench_small().with_dtype(dtype).with_attention(args.attention)
    model = llava_jax.random_model(config, seed=0, tokenizer=WordTokenizer())
    device = jax.devices()[0].device_kind
    print(
        f"device: {device} ({backend}, {jax.device_count()} device(s)), {platform.processor()}, "
        f"{os.cpu_count()} CPUs; dtype {dtype}; attention {args.attention}; "
        f"jax {jax.__version__}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = write_questions(os.path.join(tmp, "pope"), args.questions)
        for batch in args.batches:
            row = measure(model, data_dir, tmp, batch, args.questions, args.new_tokens)
            rows.append(row)
            print(
                f"batch {batch:4d}: {row['questions_per_second']:9.2f} questions/s "
                f"({row['questions']} in {row['seconds']:.2f} s); host side alone "
                f"{row['host_questions_per_second']:.0f} questions/s",
                flush=True,
            )
    base = rows[0]["questions_per_second"]
    best = max(rows, key=lambda r: r["questions_per_second"])
    print(
        f"best: batch {best['batch']}, {best['questions_per_second']:.2f} questions/s, "
        f"{best['questions_per_second'] / base:.1f}x batch {rows[0]['batch']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": device, "backend": backend, "dtype": dtype, "rows": rows},
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
