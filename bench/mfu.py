"""Training-step MFU of llava_jax on the local accelerator, per attention implementation.

A LLaVA-1.5-shaped model with a real CLIP ViT-L/14-336 tower and a ~1.3B LLaMA
(24 x 2048), stage-2 settings (projector + LLM trained, vision frozen), bf16
compute with float32 master weights, remat 'dots', batch B x T packed rows with
one image per 640 tokens. MFU = model FLOPs (`llava_jax.train.flops`) / step
time / device peak. `--cpu-smoke` runs a tiny shape so the script is known to work.

Usage: python bench/mfu.py [--out DIR] [--impls xla,auto] [--budget-s 240] [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def model_config(smoke: bool):
    from llava_jax.config import LlamaConfig, VisionConfig, compose_llava
    from llava_jax.presets import tiny

    if smoke:
        return tiny(vocab_size=512, image_size=28)
    vision = VisionConfig()  # CLIP ViT-L/14-336
    llm = LlamaConfig(
        vocab_size=32064,
        hidden_size=2048,
        intermediate_size=5632,
        num_layers=24,
        num_heads=16,
        num_kv_heads=16,
        head_dim=128,
        max_position_embeddings=4096,
    )
    return compose_llava(
        vision,
        llm,
        image_token_index=32000,
    )


def make_batch(config, batch: int, length: int, images_per_row: int):
    """Packed rows: each row holds `images_per_row` samples of (image block + text), restarting positions."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    per = config.image_seq_length
    seg_len = length // images_per_row
    ids = rng.integers(3, min(config.llm.vocab_size, 32000), size=(batch, length))
    labels = ids.copy()
    positions = np.zeros((batch, length), np.int32)
    segments = np.zeros((batch, length), np.int32)
    for k in range(images_per_row):
        s = k * seg_len
        ids[:, s] = 1
        ids[:, s + 1 : s + 1 + per] = config.image_token_index
        labels[:, s : s + 1 + per + 8] = -100
        positions[:, s : s + seg_len] = np.arange(seg_len)
        segments[:, s : s + seg_len] = k + 1
    s = config.vision.image_size
    images = rng.standard_normal((batch, images_per_row, s, s, 3)).astype(np.float32)
    return {
        "input_ids": jnp.asarray(ids, jnp.int32),
        "labels": jnp.asarray(labels, jnp.int32),
        "positions": jnp.asarray(positions),
        "segment_ids": jnp.asarray(segments),
        "images": jnp.asarray(images),
    }


def initial_state(base, smoke: bool, devices=None):
    """(train state, optimizer, lr schedule): float32 trainable LLM + projector, bf16 frozen tower.

    `devices`: where the state lives (default all; an FSDP mesh over them).
    """
    import jax
    import jax.numpy as jnp

    from llava_jax.model.params import init_params
    from llava_jax.sharding import make_mesh
    from llava_jax.train.optim import OptimConfig, make_optimizer
    from llava_jax.train.partition import split
    from llava_jax.train.step import TrainState

    params = init_params(base, jax.random.PRNGKey(0), mesh=make_mesh((1, -1, 1), devices))
    trainable, frozen = split(params, ["^projector/", "^llm/"])
    frozen = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if not smoke else x, frozen)
    tx, lr = make_optimizer(OptimConfig(lr=2e-5, warmup_ratio=0.0), 1000, trainable)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=trainable,
        frozen=frozen,
        opt_state=jax.jit(tx.init)(trainable),
        rng=jax.random.PRNGKey(0),
    )
    return state, tx, lr


def run_impl(
    impl: str,
    base,
    init,
    batch_size: int,
    length: int,
    images_per_row: int,
    steps: int,
    smoke: bool,
    remat: str = "dots",
):
    """One config's compiled train step: timings, MFU and memory (a dict); `remat` is the LLM's policy."""
    import jax
    import jax.numpy as jnp

    from llava_jax.train.flops import peak_flops, train_step_flops
    from llava_jax.train.step import train_step

    dtype = "float32" if smoke else "bfloat16"
    config = base.with_attention(impl).with_dtype(dtype, "float32")
    config = dataclasses.replace(config, llm=dataclasses.replace(config.llm, remat_policy=remat))
    state0, tx, lr = init
    state = jax.tree.map(jnp.copy, state0)  # the step donates its input; keep the initial state for the next impl
    batch = make_batch(config, batch_size, length, images_per_row)
    step = jax.jit(
        functools.partial(train_step, config=config, optimizer=tx, lr_fn=lr, loss_chunk=1024), donate_argnums=0
    )
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    tokens = int((batch["segment_ids"] > 0).sum())
    flops = train_step_flops(
        config, tokens=tokens, images=batch_size * images_per_row, seq_len=length // images_per_row, llm_trained=True
    )
    kind = jax.devices()[0].device_kind
    peak = peak_flops(kind)
    return {
        "impl": impl,
        "remat": remat,
        "device": kind,
        "batch": batch_size,
        "length": length,
        "dtype": dtype,
        "compile_s": round(compile_s, 1),
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "model_tflop_per_step": flops / 1e12,
        "tflops_per_device": flops / step_s / 1e12 / jax.device_count(),
        "mfu": flops / step_s / (peak * jax.device_count()) if peak else None,
        "loss": float(m["train/loss"]),
        "temp_gib": None if mem is None else mem.temp_size_in_bytes / 2**30,
        "argument_gib": None if mem is None else mem.argument_size_in_bytes / 2**30,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--impls", default="xla,auto")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=240)
    parser.add_argument("--cpu-smoke", action="store_true")
    args = parser.parse_args()
    import jax

    smoke = args.cpu_smoke or jax.default_backend() == "cpu"
    batch, length, per_row = (2, 64, 2) if smoke else (args.batch, args.length, 3)
    base = model_config(smoke)
    rows, start = [], time.perf_counter()
    init = initial_state(base, smoke)
    for impl in args.impls.split(","):
        if time.perf_counter() - start > args.budget_s:
            rows.append({"impl": impl, "error": "skipped: time budget spent"})
            continue
        try:
            rows.append(run_impl(impl, base, init, batch, length, per_row, 2 if smoke else args.steps, smoke))
        except Exception as e:  # one failing impl must not hide the others
            rows.append({"impl": impl, "error": f"{type(e).__name__}: {str(e)[:400]}"})
        print(json.dumps(rows[-1]), flush=True)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "mfu.json"), "w") as f:
                json.dump(rows, f, indent=2)
    print("\n| impl | device | batch x len | step s | tokens/s | TFLOP/s/dev | MFU | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['impl']} | error: {r['error'][:120]} |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(
            f"| {r['impl']} | {r['device']} | {r['batch']}x{r['length']} | {r['step_s']:.3f} | "
            f"{r['tokens_per_s']:.0f} | {r['tflops_per_device']:.1f} | {mfu} | {r['compile_s']} |"
        )


if __name__ == "__main__":
    main()
