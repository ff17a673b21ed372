"""One stage-2 train step: llava_jax vs transformers' PyTorch LLaVA, same weights, same AdamW, same batch.

bench-small shape (ViT 6x384 at 224 px, LLM 8x1024, vocab 32064), batch 2 x 512
tokens (one image each), float32, vision frozen, projector + LLM trained. Prints
step rates, their ratio, and llava_jax's model FLOP/s against the machine's
measured float32 matmul peak (FLOPs from `llava_jax.train.flops.train_step_flops`:
6N per trained-weight token, 2N per frozen vision token, 6*L*d*T attention).

Usage: python bench/train.py [--steps 5] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Measured float32 matmul FLOP/s of this machine through XLA (median of repeats)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / sorted(times)[len(times) // 2]


def make_batch(config, batch: int, length: int, seed: int = 0):
    """input_ids/labels int[B, T] with one image block per row, pixels float32[B, 3, S, S]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    per = config.image_seq_length
    ids = rng.integers(3, 32000, size=(batch, length))
    ids[:, 0] = 1
    ids[:, 1 : 1 + per] = config.image_token_index
    labels = ids.copy()
    labels[:, : 1 + per + 16] = -100  # image, BOS and the prompt are not supervised
    s = config.vision.image_size
    pixels = rng.standard_normal((batch, 3, s, s)).astype(np.float32)
    return ids, labels, pixels


def bench_jax(model, ids, labels, pixels, steps: int):
    import jax
    import jax.numpy as jnp

    from llava_jax.model.inputs import images_per_row
    from llava_jax.train.optim import OptimConfig, make_optimizer
    from llava_jax.train.partition import split
    from llava_jax.train.step import TrainState, train_step

    trainable, frozen = split(model.params, ["^projector/", "^llm/"])
    tx, lr = make_optimizer(OptimConfig(lr=2e-5, warmup_ratio=0.0), 1000, trainable)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=trainable,
        frozen=frozen,
        opt_state=tx.init(trainable),
        rng=jax.random.PRNGKey(0),
    )
    batch = {
        "input_ids": jnp.asarray(ids, jnp.int32),
        "labels": jnp.asarray(labels, jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape),
        "segment_ids": jnp.ones(ids.shape, jnp.int32),
        "images": jnp.asarray(images_per_row(ids, pixels, model.config)),
    }
    step = jax.jit(functools.partial(train_step, config=model.config, optimizer=tx, lr_fn=lr), donate_argnums=0)
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        losses.append(float(m["train/loss"]))
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], losses


def bench_torch(hf_dir, ids, labels, pixels, steps: int, threads: int):
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.set_num_threads(threads)
    model = LlavaForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).train()
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    inputs = dict(input_ids=torch.tensor(ids), labels=torch.tensor(labels), pixel_values=torch.tensor(pixels))

    def one():
        opt.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    one()
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(one())
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], losses


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    from llava_jax.api import random_model
    from llava_jax.presets import bench_small
    from llava_jax.train.flops import train_step_flops

    model = random_model(bench_small().with_attention("xla"))
    ids, labels, pixels = make_batch(model.config, args.batch, args.length)
    peak = matmul_peak()
    with tempfile.TemporaryDirectory() as hf_dir:
        model.export_hf(hf_dir)  # before the JAX step donates (deletes) the parameter buffers
        torch_time, torch_losses = bench_torch(hf_dir, ids, labels, pixels, args.steps, args.threads)
    jax_time, jax_losses = bench_jax(model, ids, labels, pixels, args.steps)
    flops = train_step_flops(model.config, tokens=ids.size, images=ids.shape[0], seq_len=ids.shape[1], llm_trained=True)
    result = {
        "device": jax.devices()[0].device_kind,
        "batch": args.batch,
        "length": args.length,
        "llava_jax_step_s": jax_time,
        "transformers_step_s": torch_time,
        "speedup": torch_time / jax_time,
        "first_loss": {"llava_jax": jax_losses[0], "transformers": torch_losses[0]},
        "model_tflop_per_step": flops / 1e12,
        "model_tflops": flops / jax_time / 1e12,
        "matmul_peak_tflops": peak / 1e12,
        "fraction_of_peak": flops / jax_time / peak,
    }
    print(json.dumps(result, indent=2))
    print(
        f"\nllava_jax {jax_time:.3f} s/step, transformers {torch_time:.3f} s/step: "
        f"{result['speedup']:.2f}x (target >= 1.3x)"
    )
    print(
        f"model FLOP/s {result['model_tflops']:.3f} TFLOP/s = {result['fraction_of_peak']:.0%} of the measured "
        f"float32 matmul peak {peak / 1e12:.3f} TFLOP/s (target >= 60%)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
