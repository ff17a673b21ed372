"""Generation speed: llava_jax vs transformers' PyTorch `generate`, same random model, same run.

Shape `bench-small` (`llava_jax.presets.bench_small`): prompt = BOS + 256 image
placeholders + 15 text tokens (272), 64 new tokens, greedy, EOS disabled so
every run makes exactly 64 tokens. Reports time to first token (prefill,
image encoding included) and decode tokens/s (tokens after the first, all
rows) for batch 1 and 8, and the llava_jax / transformers ratios. A decode step
streams the LLM's weights (decoder layers and the output head) and reads the KV
cache; `bytes/token x tokens/s` (per row: the step's bytes x steps/s) is printed
as a fraction of the bandwidth that plain matrix-vector products over the same
number of weight bytes reach on this machine, measured in the same run.

Run: `.venv/bin/python bench/generate.py [--batches 1 8] [--repeats 3] [--layout auto|scan|unrolled]`;
llava_jax alone on a GPU: `JAX_PLATFORMS=cuda python bench/generate.py --no-hf --layout scan`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
import torch

import llava_jax
from llava_jax.convert.hf_config import llava_config_to_hf
from llava_jax.presets import bench_small

TEXT_TOKENS = 16
NEW_TOKENS = 64


def build_models(seed: int = 0):
    """A random HF `LlavaForConditionalGeneration` and the same weights loaded by llava_jax."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = bench_small()
    torch.manual_seed(seed)
    hf = LlavaForConditionalGeneration(LlavaConfig.from_dict(llava_config_to_hf(config))).eval()
    hf.generation_config.eos_token_id = None  # fixed-length runs on both sides
    hf.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = llava_jax.load(d)
    return hf, model


def make_inputs(config, batch: int, seed: int = 0):
    """int64[B, 272] ids (BOS, 256 placeholders, 15 text) and float32[B, 3, 224, 224] pixels."""
    rng = np.random.default_rng(seed)
    per = config.image_seq_length
    ids = rng.integers(3, 32000, size=(batch, 1 + per + TEXT_TOKENS - 1))
    ids[:, 0] = 1
    ids[:, 1 : 1 + per] = config.image_token_index
    s = config.vision.image_size
    pixels = rng.standard_normal((batch, 3, s, s)).astype(np.float32)
    return ids, pixels


def decode_step_bytes(config, batch: int, cache_len: int) -> int:
    """Bytes one decode step must read: LLM decoder weights + output head (float32) + the KV cache."""
    llm = config.llm
    d, hd = llm.hidden_size, llm.head_dim
    attn = d * hd * (2 * llm.num_heads + 2 * llm.num_kv_heads)  # q, o and k, v projections
    layer = attn + 3 * d * llm.intermediate_size + 2 * d  # + gate/up/down and two norms
    weights = llm.num_layers * layer + d + llm.vocab_size * d  # + final norm and head
    kv = 2 * llm.num_layers * batch * llm.num_kv_heads * cache_len * hd
    return 4 * (weights + kv)


def matvec_bandwidth(total_bytes: int, repeats: int = 20) -> float:
    """Bytes/s of plain `x @ W` (float32, one row) over matrices totalling `total_bytes`."""
    rows, cols = 1024, 2816
    count = max(1, total_bytes // (4 * rows * cols))
    weights = [jax.device_put(np.full((rows, cols), 1e-3, np.float32)) for _ in range(count)]
    x = jax.device_put(np.ones((1, rows), np.float32))
    fn = jax.jit(lambda x, ws: sum(jax.numpy.sum(x @ w) for w in ws))
    fn(x, weights).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x, weights).block_until_ready()
        times.append(time.perf_counter() - start)
    return count * 4 * rows * cols / statistics.median(times)


def time_jax(model, ids, pixels, layout: str):
    """(ttft_s, decode_tok_s) of one llava_jax generation (compiled beforehand by a warm-up)."""
    t = {}
    out = model.generate(ids, pixels, max_new_tokens=NEW_TOKENS, eos_token_id=(), layout=layout, timings=t)
    assert out.shape == (ids.shape[0], NEW_TOKENS), out.shape
    return t["prefill_s"], ids.shape[0] * (NEW_TOKENS - 1) / t["decode_s"]


class _Clock:
    """transformers streamer that timestamps each `put` (the prompt first, then each new token)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        self.times.append(time.perf_counter())


def time_hf(hf, ids, pixels):
    """(ttft_s, decode_tok_s) of one transformers generation."""
    inputs = {
        "input_ids": torch.tensor(ids),
        "pixel_values": torch.tensor(pixels),
        "attention_mask": torch.ones(ids.shape, dtype=torch.long),
    }
    clock = _Clock()
    with torch.inference_mode():
        start = time.perf_counter()
        out = hf.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS, streamer=clock)
        end = time.perf_counter()
    assert out.shape[1] == ids.shape[1] + NEW_TOKENS, out.shape
    first = clock.times[1]  # times[0] is the prompt, times[1] the first new token
    return first - start, ids.shape[0] * (NEW_TOKENS - 1) / (end - first)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--no-hf", action="store_true", help="llava_jax only (e.g. on a GPU, with JAX_PLATFORMS)")
    parser.add_argument(
        "--layout",
        default="auto",
        choices=("auto", "scan", "unrolled"),
        help="llava_jax decoder layout (see llava_jax.infer.decode)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    hf, model = build_models()
    print(
        f"# bench-small generate: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} ({args.threads} threads), "
        f"prompt {model.config.image_seq_length}+{TEXT_TOKENS} tokens, {NEW_TOKENS} new, greedy, float32; "
        f"layout {args.layout}; median of {args.repeats} interleaved runs; load average {os.getloadavg()[0]:.1f}"
    )
    ids_len = 1 + model.config.image_seq_length + TEXT_TOKENS - 1
    cache_len = ids_len + NEW_TOKENS
    peak_bw = matvec_bandwidth(decode_step_bytes(model.config, 1, 0))
    print(f"# matrix-vector bandwidth (x @ W, float32, the LLM's weight bytes): {peak_bw / 1e9:.1f} GB/s")
    print(
        "| batch | llava_jax TTFT s | transformers TTFT s | TTFT speed-up | llava_jax decode tok/s | "
        "transformers decode tok/s | decode ratio | llava_jax GB/s (of matvec) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        step_bytes = decode_step_bytes(model.config, batch, cache_len)

        def _bw(tok_s, batch=batch, step_bytes=step_bytes):
            achieved = tok_s / batch * step_bytes
            return f"{achieved / 1e9:.1f} ({achieved / peak_bw:.2f})"

        ids, pixels = make_inputs(model.config, batch)
        time_jax(model, ids, pixels, args.layout)  # compiles
        ours, theirs = [], []
        if args.no_hf:
            ours = [time_jax(model, ids, pixels, args.layout) for _ in range(args.repeats)]
            o_ttft, o_tps = (statistics.median(x) for x in zip(*ours))
            print(f"| {batch} | {o_ttft:.4f} | - | - | {o_tps:.1f} | - | - | {_bw(o_tps)} |", flush=True)
            continue
        time_hf(hf, ids, pixels)  # warm-up
        # Interleaved, so that load from other processes on a shared machine hits both alike.
        for _ in range(args.repeats):
            ours.append(time_jax(model, ids, pixels, args.layout))
            theirs.append(time_hf(hf, ids, pixels))
        o_ttft, o_tps = (statistics.median(x) for x in zip(*ours))
        t_ttft, t_tps = (statistics.median(x) for x in zip(*theirs))
        print(
            f"| {batch} | {o_ttft:.3f} | {t_ttft:.3f} | {t_ttft / o_ttft:.2f}x | {o_tps:.1f} | {t_tps:.1f} | "
            f"{o_tps / t_tps:.2f}x | {_bw(o_tps)} |",
            flush=True,
        )
    print(f"(load average after: {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
