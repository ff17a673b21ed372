"""Issue #20's GPU session in one script: ceilings, packed causal attention kernels, the stage-2 step per remat policy.

On a lent GPU (repo root; a device session has ~15 minutes in all, so one run):

  python3 bench/device_check.py --out "$OUT" --budget-s 330

and first on a CPU at tiny sizes, Pallas kernels interpreted, so the device run holds no surprises:

  python bench/device_check.py --cpu-smoke --out /tmp/device_check

Parts, in order (each row is written to OUT/device_check.json as soon as it exists):
 0. Ceilings, measured once (METHOD.md): a bf16 8192^3 matmul on random data and a
    device-to-device pass (x + 1: bytes read + written). Datasheet peaks are leads.
 1. Attention, B=4, N=K=32, H=128, bf16, causal, 4 uneven packed segments, T = 2048 and 4096
    (bench/attention.py's workload): correctness first on every candidate (relative
    Frobenius error of out, dq, dk, dv against a float32 reference on fresh random inputs;
    bf16 passes under 1e-2), then median forward and forward+backward times of
    `xla`, `pallas_gpu` over a small sweep of tiles / warps / stages (the best at T=2048
    goes on to 4096), `jax.experimental.pallas.ops.gpu.attention.mha` (segment ids),
    cuDNN packed through jax's private fused-attention API (segment offsets; Hopper),
    and `cudnn*` = `jax.nn.dot_product_attention(implementation="cudnn")`, which takes no
    segments (plain causal, marked *). FLOPs count visible pairs only (4*N*H forward,
    3.5x that with the backward); each row says its % of the datasheet bf16 peak and of
    the measured matmul ceiling, and the floor max(flops / ceiling, bytes / bandwidth).
 2. The stage-2 train step: CLIP ViT-L/14-336 (frozen, bf16) + projector + a 7B-shaped
    slice of LLaMA (d 4096, MLP 11008, 32 heads, `--layers` layers, trained, float32
    master weights), bf16 compute, packed 2048-token rows of 3 image samples
    (bench/mfu.py), attention `auto` (pallas_gpu in the LLM, cuDNN in the tower), once
    per remat policy: step time and MFU from llava_jax/train/flops.py.

A short table comes last; the JSON has every number.

Expectations to check the result against (bench/RESULTS.md, H200, 2026-11-26): pallas_gpu's
forward reached 10% (T=2048) and 17% (T=4096) of bf16 peak with the default tiles, cuDNN
47% without segments; the training step 25.6% MFU with remat `dots` on a 1.3B LLaMA. The
sweep changes tiles, warps and stages only, so at most a ~1.5x gain is plausible; a 7B
slice has a larger d, so its matmuls should run closer to the ceiling than the 1.3B did;
`full` recomputes each layer's forward (about 4/3 of the step's flops, MFU counts the
model flops only) and should lose ~20-25% to `minimal`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import llava_jax  # noqa: E402,F401  (the real package first: bench/attention.py then reuses it)
from llava_jax.kernels import pallas_gpu  # noqa: E402
from llava_jax.train.flops import peak_flops  # noqa: E402


def _load(name: str):
    """bench/NAME.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


A = _load("attention")
M = _load("mfu")
# Most wanted first (the production default, then the candidates to replace it).
POLICIES = ("full", "minimal", "dots_with_no_batch_dims", "qkv_proj", "dots", "none")
B = pallas_gpu.BlockSizes
# The sweep: tiles of the forward (q x k), of the backward kernels, warps and pipeline stages.
PALLAS_SWEEP = {
    "default": B(),
    "q128k128-w8": B(block_q=128, block_k=128, num_warps=8),
    "q64k64-w4": B(block_q=64, block_k=64, num_warps=4),
    "q128k64-s3": B(num_stages=3),
    "q128k64-w8-s3": B(num_warps=8, num_stages=3),
    "bwd-dq128x64-dkv32x128": B(block_q_dq=128, block_k_dq=64, block_q_dkv=32, block_k_dkv=128),
}


def two_numbers(w, peak_tflops: float | None, bandwidth_gbs: float | None) -> dict:
    """FLOPs, fewest bytes and the floor time (ms) of a workload's forward and forward+backward."""
    flops = 4.0 * w.n * w.h * A.visible_pairs(w)
    item = jnp.dtype(w.dtype).itemsize
    qo, kv = w.batch * w.t * w.n * w.h * item, w.batch * w.t * w.k * w.h * item
    fwd_bytes = 2 * qo + 2 * kv  # read q, k, v, write out
    bwd_bytes = fwd_bytes + 3 * qo + 2 * kv  # + read out, dout, write dq, read/write dk dv
    out = {"fwd_flops": flops, "fwd_bwd_flops": 3.5 * flops, "fwd_bytes": fwd_bytes, "fwd_bwd_bytes": bwd_bytes}
    if peak_tflops and bandwidth_gbs:
        floor = lambda f, b: max(f / peak_tflops / 1e9, b / bandwidth_gbs / 1e6)
        out["fwd_floor_ms"] = floor(flops, fwd_bytes)
        out["fwd_bwd_floor_ms"] = floor(3.5 * flops, bwd_bytes)
    return out


# ---------------------------------------------------------------------------- ceilings
def ceilings(smoke: bool, repeats: int, warmup: int) -> dict:
    """Measured bf16 matmul TFLOP/s (two timings, for the spread) and device memory GB/s."""
    n = 256 if smoke else 8192
    ka, kb, kx = jax.random.split(jax.random.key(1), 3)
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)  # random data: zeros run faster than real inputs
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    mm = jax.jit(lambda a, b: a @ b)
    runs = [A.timeit(mm, (a, b), repeats, warmup) for _ in range(2)]
    x = jax.random.normal(kx, (2**16 if smoke else 2**28,), jnp.float32)
    copy_ms = A.timeit(jax.jit(lambda x: x + 1.0), (x,), repeats, warmup)
    return {
        "matmul_n": n,
        "matmul_tflops": [2 * n**3 / ms / 1e9 for ms in runs],
        "copy_gbs": 2 * x.nbytes / copy_ms / 1e6,
    }


# --------------------------------------------------------------------------- attention
def _cudnn_packed(seg):
    """cuDNN flash attention on packed rows: jax's private fused-attention API with segment offsets."""
    from jax._src.cudnn.fused_attention_stablehlo import MaskType
    from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as dpa

    seg = np.asarray(seg)  # contiguous runs (SEGMENT_CUTS): offsets are the first index of each id
    starts = [np.flatnonzero(np.diff(row, prepend=row[0] - 1)) for row in seg]
    m = max(len(s) for s in starts)
    offsets = np.full((seg.shape[0], m + 1), -1, np.int32)
    lengths = np.full((seg.shape[0], m), -1, np.int32)
    for i, s in enumerate(starts):
        offsets[i, : len(s)] = s
        lengths[i, : len(s)] = np.diff([*s, seg.shape[1]])
    offsets, lengths = jnp.asarray(offsets), jnp.asarray(lengths)

    def fn(q, k, v, _seg):
        return dpa(
            q,
            k,
            v,
            q_seqlen=lengths,
            kv_seqlen=lengths,
            q_offsets=offsets,
            kv_offsets=offsets,
            scale=q.shape[-1] ** -0.5,
            mask_type=MaskType.PADDING_CAUSAL,
        )

    return fn


def candidates(backend: str, interpret: bool, seg, sweep: dict) -> dict:
    """name -> (fn(q, k, v, seg) -> out, takes segments). GPU-only kernels are absent on other backends."""
    from jax.experimental.pallas.ops.gpu import attention as jax_gpu_attention

    def ours(bs):
        return lambda q, k, v, s: pallas_gpu.attention(
            q, k, v, causal=True, segment_ids=s, block_sizes=bs, interpret=interpret
        )

    def jax_mha(bs=None):
        kw = {} if bs is None else {"block_sizes": bs}
        return lambda q, k, v, s: jax_gpu_attention.mha(
            q, k, v, s, sm_scale=q.shape[-1] ** -0.5, causal=True, interpret=interpret, **kw
        )

    # Most wanted first: a row the time budget cuts off is a sweep variant, not a baseline.
    out = {"xla": (lambda q, k, v, s: A.K.attention(q, k, v, causal=True, segment_ids=s, impl="xla"), True)}
    out["pallas_gpu[default]"] = (ours(sweep["default"]), True)
    if backend == "gpu":
        out["cudnn_packed"] = (_cudnn_packed(seg), True)
        out["cudnn*"] = (
            lambda q, k, v, s: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn"),
            False,
        )
    out["jax_pallas_mha"] = (jax_mha(), True)
    out.update({f"pallas_gpu[{name}]": (ours(bs), True) for name, bs in sweep.items() if name != "default"})
    small = jax_gpu_attention.BlockSizes(64, 64, block_q_dkv=32, block_kv_dkv=32, block_q_dq=32, block_kv_dq=32)
    out["jax_pallas_mha[q64k64]"] = (jax_mha(small), True)
    return out


def _fwd_bwd(fn):
    def f(q, k, v, s, do):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, s), q, k, v)
        return out, vjp(do.astype(out.dtype))

    return jax.jit(f)


_COMPILED: dict = {}


def compiled(name: str, w, fn):
    """(jitted forward, jitted forward+backward) of candidate `name` on workload `w`, made once."""
    if (name, w) not in _COMPILED:
        _COMPILED[(name, w)] = (jax.jit(fn), _fwd_bwd(fn))
    return _COMPILED[(name, w)]


_REFERENCE: dict = {}


def _reference(w, takes_segments: bool):
    """(inputs, float32 `xla` out and grads) on fresh inputs (seed 7), computed once per workload."""
    if (w, takes_segments) not in _REFERENCE:
        q, k, v, kw, do = A.make_inputs(w, seed=7)
        seg = kw["segment_ids"] if takes_segments else None
        with jax.default_matmul_precision("highest"):
            ref_fn = _fwd_bwd(lambda q, k, v, s: A.K.attention(q, k, v, causal=True, segment_ids=s, impl="xla"))
            f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
            ref_out, ref_grads = ref_fn(*f32[:3], seg, f32[3])
        _REFERENCE[(w, takes_segments)] = ((q, k, v, seg, do), [ref_out, *ref_grads])
    return _REFERENCE[(w, takes_segments)]


def rel_errors(name, fn, w, takes_segments: bool) -> list[float]:
    """||got - ref|| / ||ref|| of out, dq, dk, dv against float32 `xla` (NaN anywhere: all NaN)."""
    inputs, want = _reference(w, takes_segments)
    out, grads = compiled(name, w, fn)[1](*inputs)
    got = [out, *grads]
    if not all(bool(jnp.isfinite(x.astype(jnp.float32)).all()) for x in got):
        return [float("nan")] * 4
    norm = lambda x: jnp.linalg.norm(x.astype(jnp.float32).ravel())
    return [float(norm(a.astype(jnp.float32) - b) / norm(b)) for a, b in zip(got, want)]


def time_row(name, fn, takes_segments, w, repeats, warmup, ceil) -> dict:
    """Median forward and forward+backward ms of one candidate on workload `w`, with the % of peak."""
    q, k, v, kw, do = A.make_inputs_cached(w)
    wl = w if takes_segments else dataclasses.replace(w, packed=False)
    seg = kw["segment_ids"] if takes_segments else None
    row = {"t": w.t, "impl": name}
    fwd, fwd_bwd = compiled(name.removesuffix(" (again)"), w, fn)
    row["fwd_ms"] = A.timeit(fwd, (q, k, v, seg), repeats, warmup)
    row["fwd_bwd_ms"] = A.timeit(fwd_bwd, (q, k, v, seg, do), repeats, warmup)
    nums = two_numbers(wl, ceil.get("matmul"), ceil.get("copy_gbs"))
    row["fwd_tflops"] = nums["fwd_flops"] / row["fwd_ms"] / 1e9
    row["fwd_bwd_tflops"] = nums["fwd_bwd_flops"] / row["fwd_bwd_ms"] / 1e9
    for key in ("fwd", "fwd_bwd"):
        if ceil.get("datasheet"):
            row[f"{key}_pct_peak"] = 100 * row[f"{key}_tflops"] / ceil["datasheet"]
        if ceil.get("matmul"):
            row[f"{key}_pct_matmul"] = 100 * row[f"{key}_tflops"] / ceil["matmul"]
        if f"{key}_floor_ms" in nums:
            row[f"{key}_floor_ms"] = nums[f"{key}_floor_ms"]
    return row


def attention_part(args, smoke, backend, ceil, result, save, deadline):
    """Correctness of every candidate, then timings at each T (the sweep at the first T only).

    The time left after the correctness checks is split evenly over the lengths, so the
    sweep at T=2048 cannot eat T=4096's share.
    """
    interpret = backend != "gpu"
    dtype = "float32" if smoke else "bfloat16"
    if smoke:
        check = A.Workload(1, 64, 2, 2, 32, dtype)
        workloads = [check]
        sweep = {name: PALLAS_SWEEP[name] for name in ("default", "q64k64-w4")}
    else:
        check = A.Workload(1, 1024, 8, 8, 128, dtype)
        workloads = [A.Workload(4, t, 32, 32, 128, dtype) for t in args.seq]
        sweep = PALLAS_SWEEP
    tol = 1e-4 if dtype == "float32" else 1e-2
    _, _, _, kw, _ = A.make_inputs(check)
    cands = candidates(backend, interpret, kw["segment_ids"], sweep)
    for name, (fn, takes_segments) in cands.items():
        if name == "xla":
            continue
        row = {"impl": name, "t": check.t, "tolerance": tol}
        try:
            if name == "cudnn_packed":  # offsets are built for the check workload's segments
                fn = _cudnn_packed(kw["segment_ids"])
            row["rel_errors"] = errs = rel_errors(name, fn, check, takes_segments)
            row["ok"] = bool(all(e <= tol for e in errs))  # NaN fails
        except Exception as e:  # noqa: BLE001  one kernel failing must not stop the others
            row.update(error=A.short_error(e), traceback=traceback.format_exc(limit=6))
        result["correctness"].append(row)
        save()
        print("correctness", name, row.get("rel_errors", row.get("error")), flush=True)

    repeats = args.repeats or (1 if smoke else 10)
    warmup = 0 if smoke else 2
    best = None
    begin = time.time()
    for i, w in enumerate(workloads):
        w_deadline = begin + (i + 1) * (deadline - begin) / len(workloads)
        _, _, _, kw, _ = A.make_inputs_cached(w)
        cands = candidates(backend, interpret, kw["segment_ids"], sweep)
        names = list(cands)
        if i == 0 and "jax_pallas_mha" in names:  # the default timed twice, apart: the spread of a timing
            names.insert(names.index("jax_pallas_mha") + 1, "pallas_gpu[default] (again)")
        elif best is not None:  # later lengths: the reference, the default and the sweep's winner
            names = [n for n in names if not n.startswith("pallas_gpu[") or n in (best, "pallas_gpu[default]")]
        for name in names:
            key = name.removesuffix(" (again)")
            fn, takes_segments = cands[key]
            if time.time() > w_deadline:
                row = {"t": w.t, "impl": name, "skipped": "time budget"}
            else:
                try:
                    row = time_row(name, fn, takes_segments, w, repeats, warmup, ceil)
                except Exception as e:  # noqa: BLE001
                    row = {
                        "t": w.t,
                        "impl": name,
                        "error": A.short_error(e),
                        "traceback": traceback.format_exc(limit=6),
                    }
            result["attention"].append(row)
            save()
            print("timing", w.t, name, {k: v for k, v in row.items() if k.endswith("ms") or k == "error"}, flush=True)
        if i == 0:
            timed = [
                r
                for r in result["attention"]
                if r["t"] == w.t and r["impl"].startswith("pallas_gpu[") and "fwd_bwd_ms" in r
            ]
            best = min(timed, key=lambda r: r["fwd_bwd_ms"])["impl"].removesuffix(" (again)") if timed else None
            result["pallas_best"] = best


def step_part(args, smoke, result, save, deadline):
    """The stage-2 train step once per remat policy; rows from bench/mfu.py's run_impl."""
    from llava_jax.config import VisionConfig, compose_llava
    from llava_jax.presets import vicuna_7b

    if smoke:
        base = M.model_config(True)
        batch, length, per_row, steps = 2, 64, 2, 1
    else:
        llm = dataclasses.replace(vicuna_7b(), num_layers=args.layers)
        base = compose_llava(VisionConfig(), llm, image_token_index=32000)  # CLIP ViT-L/14-336
        batch, length, per_row, steps = args.batch, args.length, 3, args.steps
    init = M.initial_state(base, smoke, devices=jax.devices()[:1])  # one device, as the GPU session has
    for policy in args.policies.split(","):
        if time.time() > deadline:
            row = {"remat": policy, "skipped": "time budget"}
        else:
            try:
                row = M.run_impl(args.impl, base, init, batch, length, per_row, steps, smoke, remat=policy)
                if result["ceilings"].get("matmul_tflops"):
                    row["mfu_vs_matmul"] = row["tflops_per_device"] / max(result["ceilings"]["matmul_tflops"])
            except Exception as e:  # noqa: BLE001  (out of memory for `none` must not hide the rest)
                row = {"remat": policy, "error": A.short_error(e), "traceback": traceback.format_exc(limit=6)}
        row["layers"] = base.llm.num_layers
        result["step"].append(row)
        save()
        print("step", policy, {k: v for k, v in row.items() if k in ("step_s", "mfu", "error", "skipped")}, flush=True)


def tables(result) -> str:
    """The short summary printed last."""
    c = result["ceilings"]
    lines = [f"device {result['device']} ({result['backend']}), jax {result['jax']}"]
    if c:
        mm = " / ".join(f"{x:.0f}" for x in c["matmul_tflops"])
        lines.append(f"ceilings: bf16 matmul {c['matmul_n']}^3 {mm} TFLOP/s (two runs), copy {c['copy_gbs']:.0f} GB/s")
    bad = [r for r in result["correctness"] if not r.get("ok")]
    lines.append(
        f"correctness: {len(result['correctness']) - len(bad)} ok; not ok: "
        + (
            ", ".join(f"{r['impl']} ({r.get('error') or ' / '.join(f'{e:.1e}' for e in r['rel_errors'])})" for r in bad)
            or "none"
        )
    )
    lines += [
        "",
        "| T | impl | fwd ms | fwd % peak | fwd+bwd ms | fwd+bwd % peak | floor ms fwd/bwd | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    f = lambda r, k, spec: format(r[k], spec) if k in r else "-"
    for r in result["attention"]:
        floor = f"{f(r, 'fwd_floor_ms', '.2f')}/{f(r, 'fwd_bwd_floor_ms', '.2f')}"
        note = (r.get("skipped") or r.get("error") or "")[:50]
        lines.append(
            f"| {r['t']} | {r['impl']} | {f(r, 'fwd_ms', '.2f')} | {f(r, 'fwd_pct_peak', '.0f')} "
            f"| {f(r, 'fwd_bwd_ms', '.2f')} | {f(r, 'fwd_bwd_pct_peak', '.0f')} | {floor} | {note} |"
        )
    lines += [
        "",
        f"pallas_gpu sweep winner: {result.get('pallas_best')}",
        "",
        "| remat | layers | batch x len | step s | TFLOP/s/dev | MFU | temp GiB | compile s | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["step"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        note = (r.get("skipped") or r.get("error") or "")[:60]
        lines.append(
            f"| {r['remat']} | {r['layers']} | {r.get('batch', '-')}x{r.get('length', '-')} | {f(r, 'step_s', '.3f')} "
            f"| {f(r, 'tflops_per_device', '.1f')} | {mfu} | {f(r, 'temp_gib', '.1f')} "
            f"| {r.get('compile_s', '-')} | {note} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/device_check")))
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, Pallas kernels interpreted")
    p.add_argument("--parts", default="ceilings,attention,step")
    p.add_argument("--budget-s", type=float, default=330.0, help="no new row starts after this")
    p.add_argument("--attention-share", type=float, default=0.45, help="of the budget, for part 1")
    p.add_argument("--seq", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--impl", default="auto", help="attention of the train step")
    p.add_argument("--layers", type=int, default=4, help="LLaMA-7B layers in the step's slice")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    start = time.time()
    backend = jax.default_backend()
    smoke = args.cpu_smoke or backend == "cpu"
    kind = getattr(jax.devices()[0], "device_kind", str(jax.devices()[0]))
    parts = set(args.parts.split(","))
    result = {
        "device": kind,
        "backend": backend,
        "jax": jax.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "ceilings": {},
        "correctness": [],
        "attention": [],
        "step": [],
    }
    print(f"device: {kind} ({backend}), jax {jax.__version__}", flush=True)

    def save():
        args.out.mkdir(parents=True, exist_ok=True)
        result["elapsed_s"] = time.time() - start
        (args.out / "device_check.json").write_text(json.dumps(result, indent=1))

    if "ceilings" in parts:
        result["ceilings"] = ceilings(smoke, args.repeats or (1 if smoke else 20), 0 if smoke else 3)
        save()
        print("ceilings", result["ceilings"], flush=True)
    datasheet = peak_flops(kind)
    ceil = {
        "datasheet": datasheet / 1e12 if datasheet else None,
        "matmul": max(result["ceilings"]["matmul_tflops"]) if result["ceilings"] else None,
        "copy_gbs": result["ceilings"].get("copy_gbs"),
    }
    if "attention" in parts:
        attention_part(args, smoke, backend, ceil, result, save, start + args.attention_share * args.budget_s)
    if "step" in parts:
        step_part(args, smoke, result, save, start + args.budget_s)
    save()
    text = tables(result)
    (args.out / "device_check.md").write_text(text + "\n")
    print("\n" + text + f"\n({time.time() - start:.0f} s; every number in {args.out / 'device_check.json'})")
    return result


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
