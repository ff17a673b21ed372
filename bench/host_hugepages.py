"""The demo's stage-2 train step on XLA:CPU with and without huge pages for the host heap.

`llava-jax demo` and `llava-jax train` re-execute themselves with
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (`llava_jax/runtime/hugepages.py`). This runs
the same jitted step (the demo preset, float32, projector + LLM trained, a
packed batch of 16 x 256 tokens with 3 images per row) in fresh processes with
the tunable at 0 and at 1, alternating, and prints the median step time, the
system CPU time per step and the ratio off / on.

Usage: python bench/host_hugepages.py [--steps 40] [--rounds 2] [--cpu-devices 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
TUNABLE = "glibc.malloc.hugetlb"


def child(steps: int, cpu_devices: int) -> dict:
    """Median seconds per step and system CPU seconds per step of the demo's stage-2 step in this process."""
    import jax

    jax.config.update("jax_num_cpu_devices", cpu_devices)
    import functools

    sys.path.insert(0, HERE)
    from mfu import initial_state, make_batch

    from llava_jax.presets import demo
    from llava_jax.train.step import train_step

    config = demo()
    state, tx, lr = initial_state(config, smoke=True)
    batch = make_batch(config, 16, 256, 3)
    step = jax.jit(
        functools.partial(train_step, config=config, optimizer=tx, lr_fn=lr, loss_chunk=256), donate_argnums=0
    )
    compiled = step.lower(state, batch).compile()
    for _ in range(3):  # warm up
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    sys_s = resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0
    temp = compiled.memory_analysis()
    return {
        "step_s": statistics.median(times),
        "sys_s_per_step": sys_s / steps,
        "temp_gib": None if temp is None else temp.temp_size_in_bytes / 2**30,
        "loss": float(metrics["train/loss"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2, help="alternating off/on process pairs")
    parser.add_argument("--cpu-devices", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps, args.cpu_devices)))
        return 0
    results: dict[str, list[dict]] = {"0": [], "1": []}
    for _ in range(args.rounds):
        for value in ("0", "1"):
            env = {**os.environ, "GLIBC_TUNABLES": f"{TUNABLE}={value}"}
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--steps", str(args.steps)]
            cmd += ["--cpu-devices", str(args.cpu_devices)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            results[value].append(json.loads(out.strip().splitlines()[-1]))
            r = results[value][-1]
            step_ms, sys_ms = r["step_s"] * 1e3, r["sys_s_per_step"] * 1e3
            print(f"{TUNABLE}={value}: {step_ms:.0f} ms/step, {sys_ms:.0f} ms system CPU/step")
    off = statistics.median(r["step_s"] for r in results["0"])
    on = statistics.median(r["step_s"] for r in results["1"])
    temp = results["1"][0]["temp_gib"]
    print(f"temporaries {temp:.3f} GiB per step; median step off {off * 1e3:.0f} ms, on {on * 1e3:.0f} ms")
    print(f"off / on = {off / on:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
