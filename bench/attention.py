"""Attention implementations on one device: correctness against the reference, then speed.

GPU / TPU: B=4, T in (2048, 4096), N=K=32, H=128, bfloat16, causal with 4 packed
segments of uneven length; forward and forward+backward time of every implementation
the device has (xla, cudnn, pallas_gpu with a few tile shapes, splash), achieved TFLOP/s
and the speed-up over `xla`. cuDNN cannot take segment ids without a dense mask, so its
row (marked *) times plain causal attention of the same shape instead.

TFLOP/s count only the visible (causal, same-segment) query-key pairs: 4*N*H flops per
pair forward, 2.5x that backward. Kernels that skip masked tiles are not credited for
work they avoid; the dense `xla` reference computes all T*S pairs.

CPU (or --cpu-smoke): tiny sizes, Pallas kernels in interpret mode, to show it all runs.

Run: `python3 bench/attention.py [--out DIR] [--cpu-smoke] [--budget-s 150]`; with --out,
DIR/attention.json holds every number and DIR/attention.md the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core peaks (TFLOP/s) by device-kind substring, most specific first.
PEAK_BF16 = [
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("B200", 2250.0),
]
SEGMENT_CUTS = (0.31, 0.52, 0.83)  # 4 packed segments, boundaries off the tile grid


def import_kernels():
    """`llava_jax.kernels` without running `llava_jax/__init__` (which needs flax etc.)."""
    if "llava_jax" not in sys.modules:
        pkg = types.ModuleType("llava_jax")
        pkg.__path__ = [str(ROOT / "llava_jax")]
        sys.modules["llava_jax"] = pkg
    return importlib.import_module("llava_jax.kernels")


K = import_kernels()
pallas_gpu = importlib.import_module("llava_jax.kernels.pallas_gpu")


@dataclasses.dataclass(frozen=True)
class Workload:
    """Shapes and masking of one attention call."""

    batch: int
    t: int
    n: int
    k: int
    h: int
    dtype: str
    causal: bool = True
    packed: bool = True  # segment ids at SEGMENT_CUTS
    padding: bool = False  # left-pad row 0 by T // 5 keys (empty rows under causal)


def make_inputs(w: Workload, seed: int = 0):
    """q, k, v, masking kwargs, cotangent (all on the default device)."""
    keys = jax.random.split(jax.random.key(seed), 4)
    dt = jnp.dtype(w.dtype)
    q = jax.random.normal(keys[0], (w.batch, w.t, w.n, w.h), dt)
    k = jax.random.normal(keys[1], (w.batch, w.t, w.k, w.h), dt)
    v = jax.random.normal(keys[2], (w.batch, w.t, w.k, w.h), dt)
    do = jax.random.normal(keys[3], (w.batch, w.t, w.n, w.h), dt)
    kw = {}
    if w.packed:
        cuts = np.array([int(c * w.t) for c in SEGMENT_CUTS])
        seg = (np.arange(w.t)[:, None] >= cuts[None]).sum(1)
        kw["segment_ids"] = jnp.asarray(np.broadcast_to(seg, (w.batch, w.t)), jnp.int32)
    if w.padding:
        real = np.ones((w.batch, w.t), bool)
        real[0, : w.t // 5] = False
        kw["padding_mask"] = jnp.asarray(real)
    return q, k, v, kw, do


def visible_pairs(w: Workload) -> int:
    """Query-key pairs the mask lets through, summed over the batch (no padding)."""
    lengths = np.diff([0, *[int(c * w.t) for c in SEGMENT_CUTS], w.t]) if w.packed else [w.t]
    per_row = sum(n * (n + 1) // 2 if w.causal else n * n for n in lengths)
    return int(per_row) * w.batch


@functools.lru_cache(maxsize=8)
def make_inputs_cached(w: Workload):
    """make_inputs(w), shared by every implementation timed on `w`."""
    return make_inputs(w)


def functions(impl: str, causal: bool, variant=None):
    """(forward, forward+backward) of `impl`; the latter returns (out, (dq, dk, dv))."""

    def fwd(q, k, v, kw):
        if variant is not None:
            return pallas_gpu.attention(q, k, v, causal=causal, block_sizes=variant, **kw)
        return K.attention(q, k, v, causal=causal, impl=impl, **kw)

    def fwd_bwd(q, k, v, kw, do):
        out, vjp = jax.vjp(lambda q, k, v: fwd(q, k, v, kw), q, k, v)
        return out, vjp(do.astype(out.dtype))

    return fwd, fwd_bwd


@functools.cache
def jitted(impl: str, causal: bool, variant=None):
    """`functions(...)` jitted once, so every workload of the same shape compiles once."""
    return tuple(jax.jit(f) for f in functions(impl, causal, variant))


def run_impl(impl: str, w: Workload, variant=None):
    """(forward fn, forward+backward fn, inputs) for `impl`, or raise UnsupportedAttention."""
    q, k, v, kw, _ = inputs = make_inputs_cached(w)
    reason = K.unsupported_reason(impl, q, k, v, causal=w.causal, **kw)
    if reason is not None:
        raise K.UnsupportedAttention(reason)
    return (*jitted(impl, w.causal, variant), inputs)


def max_errors(impl: str, w: Workload):
    """max |kernel - float32 reference| / max(1, max |reference|) of out, dq, dk, dv."""
    _, fb, (q, k, v, kw, do) = run_impl(impl, w)
    out, grads = fb(q, k, v, kw, do)
    with jax.default_matmul_precision("highest"):
        # A separate jit: the precision context is part of what gets compiled.
        ref = jax.jit(functions("xla", w.causal)[1])
        f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
        ref_out, ref_grads = ref(*f32[:3], kw, f32[3])
    got, want = [out, *grads], [ref_out, *ref_grads]
    return [
        float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)) / jnp.maximum(1.0, jnp.max(jnp.abs(b))))
        for a, b in zip(got, want)
    ]


def timeit(fn, args, repeats: int, warmup: int) -> float:
    """Median wall time (ms) of fn(*args), compile and `warmup` calls excluded."""
    for _ in range(1 + warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def short_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"


def peak_tflops(kind: str):
    return next((p for name, p in PEAK_BF16 if name in kind), None)


def plan(args, backend: str):
    """(correctness cases, timing workloads, implementations, pallas variants)."""
    if args.cpu_smoke or backend == "cpu":
        # Timing reuses the correctness workload, so nothing compiles twice.
        cases = [Workload(1, 100, 2, 1, 64, "float32", padding=True)]
        timing = cases
        return cases, timing, ("xla", "cudnn", "pallas_gpu", "splash"), {}
    cases = [
        Workload(2, 1000, 8, 2, 128, "bfloat16", padding=True),  # off-block length, GQA
        Workload(2, 1024, 8, 8, 128, "bfloat16", packed=False),  # what cuDNN takes
        Workload(1, 577, 4, 1, 64, "float32", causal=False, packed=False),  # ViT-like, MQA
    ]
    timing = [Workload(4, t, 32, 32, 128, "bfloat16") for t in args.seq]
    impls = {"gpu": ("xla", "cudnn", "pallas_gpu"), "tpu": ("xla", "splash")}.get(backend, ("xla",))
    variants = {}
    if backend == "gpu":
        B = pallas_gpu.BlockSizes
        variants = {
            "pallas_gpu[q128k128]": B(block_q=128, block_k=128, num_warps=8),
            "pallas_gpu[s3-dkv32x128]": B(num_stages=3, block_q_dkv=32, block_k_dkv=128),
        }
    return cases, timing, impls, variants


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="directory for attention.json / attention.md")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny interpret-mode run")
    p.add_argument("--seq", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=150.0, help="stop timing after this")
    p.add_argument("--impls", nargs="+", default=None, help="restrict to these (and variants)")
    args = p.parse_args(argv)
    start = time.time()
    backend = jax.default_backend()
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", str(dev))
    repeats = args.repeats or (1 if backend == "cpu" else 10)
    warmup = 0 if backend == "cpu" else 2
    cases, timing, impls, variants = plan(args, backend)
    if args.impls:
        impls = tuple(i for i in impls if i in args.impls)
        variants = {n: v for n, v in variants.items() if n in args.impls or "pallas_gpu" in impls}
    print(f"device: {kind} ({backend}), jax {jax.__version__}, python {platform.python_version()}", flush=True)
    result = {
        "device": kind,
        "backend": backend,
        "jax": jax.__version__,
        "flops_note": "visible pairs only: fwd 4*N*H per pair, bwd 2.5x fwd",
        "correctness": [],
        "timing": [],
    }

    def save():
        # After every row, so a kernel that takes the process down leaves what came before.
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            result["elapsed_s"] = time.time() - start
            (args.out / "attention.json").write_text(json.dumps(result, indent=1))

    for w in cases:
        tol = 2e-2 if w.dtype == "bfloat16" else 1e-4
        for impl in impls:
            if impl == "xla":
                continue
            row = {"case": dataclasses.asdict(w), "impl": impl}
            try:
                errs = max_errors(impl, w)
                row.update(errors=errs, ok=bool(max(errs) <= tol), tolerance=tol)
            except K.UnsupportedAttention as e:
                row.update(skipped=str(e))
            except Exception as e:  # noqa: BLE001  one kernel failing must not stop the others
                row.update(error=short_error(e), traceback=traceback.format_exc(limit=4))
            result["correctness"].append(row)
            save()
            print(
                "correctness", w.t, w.dtype, impl, row.get("errors", row.get("skipped", row.get("error"))), flush=True
            )

    deadline = start + args.budget_s
    peak = peak_tflops(kind)
    for w in timing:
        rows = [(impl, impl, None, w) for impl in impls]
        if "cudnn" in impls:  # cuDNN on the same shape without segments, marked *
            rows.append(("cudnn*", "cudnn", None, dataclasses.replace(w, packed=False)))
        rows += [(name, "pallas_gpu", v, w) for name, v in variants.items()]
        for name, impl, variant, wl in rows:
            row = {"t": w.t, "impl": name, "workload": dataclasses.asdict(wl)}
            if time.time() > deadline:
                row["skipped"] = "time budget"
            else:
                try:
                    f, fb, (q, k, v, kw, do) = run_impl(impl, wl, variant)
                    row["fwd_ms"] = timeit(f, (q, k, v, kw), repeats, warmup)
                    row["fwd_bwd_ms"] = timeit(fb, (q, k, v, kw, do), repeats, warmup)
                    wl_flops = 4.0 * wl.n * wl.h * visible_pairs(wl)
                    row["fwd_tflops"] = wl_flops / row["fwd_ms"] / 1e9
                    row["fwd_bwd_tflops"] = 3.5 * wl_flops / row["fwd_bwd_ms"] / 1e9
                    if peak:
                        row["fwd_peak_frac"] = row["fwd_tflops"] / peak
                except K.UnsupportedAttention as e:
                    row["skipped"] = str(e)
                except Exception as e:  # noqa: BLE001  (as above)
                    row.update(error=short_error(e), traceback=traceback.format_exc(limit=4))
            result["timing"].append(row)
            save()
            print(
                "timing",
                w.t,
                name,
                {k: v for k, v in row.items() if k.endswith("ms") or k in ("skipped", "error")},
                flush=True,
            )
        base = next((r for r in result["timing"] if r["t"] == w.t and r["impl"] == "xla"), {})
        for r in result["timing"]:
            if r["t"] == w.t and "fwd_ms" in r and "fwd_ms" in base:
                r["fwd_speedup"] = base["fwd_ms"] / r["fwd_ms"]
                r["fwd_bwd_speedup"] = base["fwd_bwd_ms"] / r["fwd_bwd_ms"]

    save()
    result["elapsed_s"] = time.time() - start
    text = tables(result)
    print("\n" + text)
    if args.out:
        (args.out / "attention.md").write_text(text + "\n")
        print(f"wrote {args.out / 'attention.json'} and attention.md")
    return result


def tables(result: dict) -> str:
    """Markdown tables of correctness and timing."""
    lines = [
        f"Device: {result['device']} ({result['backend']}), jax {result['jax']}",
        "",
        "| case | impl | err out / dq / dk / dv (max abs / max(1, max abs ref)) | status |",
        "|---|---|---|---|",
    ]
    for r in result["correctness"]:
        c = r["case"]
        name = (
            f"{c['dtype']} B={c['batch']} T={c['t']} N={c['n']} K={c['k']} H={c['h']}"
            f"{' causal' if c['causal'] else ''}{' packed' if c['packed'] else ''}"
            f"{' padded' if c['padding'] else ''}"
        )
        if "errors" in r:
            errs = " / ".join(f"{e:.1e}" for e in r["errors"])
            status = "ok" if r["ok"] else f"FAIL (tol {r['tolerance']:.0e})"
        else:
            errs, status = "-", r.get("skipped") or r.get("error", "")
        lines.append(f"| {name} | {r['impl']} | {errs} | {status[:90]} |")
    lines += [
        "",
        f"Timing ({result['flops_note']}); * = causal without segments.",
        "",
        (
            "| T | impl | fwd ms | fwd TFLOP/s | fwd x xla | fwd % peak | fwd+bwd ms "
            "| fwd+bwd TFLOP/s | fwd+bwd x xla | note |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(r, key, spec):
        return format(r[key], spec) if key in r else "-"

    for r in result["timing"]:
        note = (r.get("skipped") or r.get("error") or "")[:60]
        peak = f"{100 * r['fwd_peak_frac']:.0f}%" if "fwd_peak_frac" in r else "-"
        lines.append(
            f"| {r['t']} | {r['impl']} | {fmt(r, 'fwd_ms', '.2f')} "
            f"| {fmt(r, 'fwd_tflops', '.1f')} | {fmt(r, 'fwd_speedup', '.2f')} | {peak} "
            f"| {fmt(r, 'fwd_bwd_ms', '.2f')} | {fmt(r, 'fwd_bwd_tflops', '.1f')} "
            f"| {fmt(r, 'fwd_bwd_speedup', '.2f')} | {note} |"
        )
    lines.append(f"\n({result['elapsed_s']:.0f} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
