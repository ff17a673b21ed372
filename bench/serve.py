"""Serving throughput: `llava-jax serve` at 1, 8 and 32 concurrent clients vs sequential `Llava.chat` calls.

The demo model's shape (`llava_jax.presets.demo`, random weights, the shipped
synthetic tokenizer), saved and served by a `llava-jax serve` subprocess on a
loopback port. Requests are the demo task's: a fresh scene (PNG, sent as a
`data:` URI) and a held-out-style short question, greedy, `max_tokens` fixed
(random weights rarely say EOS, so answers are about that long). Each client
sends its next request when its answer arrives (closed loop). The baseline
answers the same requests one after another with `Llava.chat` in this
process (images already decoded). Both are warmed up first (every shape
compiled), so the figures are steady state: requests/s, per-request latency
p50/p95, and the mean number of rows the server decoded per decode step.

Run: `.venv/bin/python bench/serve.py [--requests 256] [--max-tokens 32] [--clients 1 8 32] [--max-batch 8]
[--batch-wait-ms 5]`
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import httpx  # noqa: E402

import llava_jax  # noqa: E402
from llava_jax.demo.synthetic import make_question, random_scene, render_scene  # noqa: E402
from llava_jax.demo.synthetic.language import QUESTION_TYPES  # noqa: E402
from llava_jax.demo.synthetic.tokenizer import synthetic_tokenizer  # noqa: E402
from llava_jax.presets import demo  # noqa: E402


def make_requests(n: int, image_size: int) -> list[dict]:
    """`n` demo-task requests: {"png": bytes, "image": PIL image, "question": str}."""
    out = []
    for i in range(n):
        scene = random_scene(50_000 + i)
        image = render_scene(scene, image_size)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        question, _ = make_question(scene, QUESTION_TYPES[i % len(QUESTION_TYPES)], random.Random(i), short=True)
        out.append({"png": buffer.getvalue(), "image": image, "question": question})
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def sequential(model, requests: list[dict], max_tokens: int) -> dict:
    """Throughput and latency of `Llava.chat` on the requests one at a time."""
    for r in requests:  # compile every prompt shape first
        model.chat(r["image"], r["question"], max_new_tokens=max_tokens)
    latencies, tokens = [], 0
    start = time.perf_counter()
    for r in requests:
        t0 = time.perf_counter()
        answer = model.chat(r["image"], r["question"], max_new_tokens=max_tokens)[0]
        latencies.append(time.perf_counter() - t0)
        tokens += len(model.tokenizer(answer, add_special_tokens=False)["input_ids"])
    wall = time.perf_counter() - start
    return {"wall": wall, "latencies": latencies, "requests": len(requests)}


def batched(model, requests: list[dict], max_tokens: int, rows: int) -> dict:
    """`Llava.chat` on `rows` requests per call, in this process: what batching alone can give (no HTTP)."""
    groups = [requests[i : i + rows] for i in range(0, len(requests), rows)]
    for g in groups:
        model.chat([r["image"] for r in g], [r["question"] for r in g], max_new_tokens=max_tokens)
    latencies = []
    start = time.perf_counter()
    for g in groups:
        t0 = time.perf_counter()
        model.chat([r["image"] for r in g], [r["question"] for r in g], max_new_tokens=max_tokens)
        latencies += [time.perf_counter() - t0] * len(g)
    return {"wall": time.perf_counter() - start, "latencies": latencies, "requests": len(requests)}


def start_server(model_dir: str, max_batch: int, max_tokens: int, wait_ms: float) -> tuple[subprocess.Popen, str, list]:
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    command = [
        sys.executable, "-m", "llava_jax.cli", "serve", "--model", model_dir, "--port", "0",
        "--max-batch", str(max_batch), "--warmup-max-tokens", str(max_tokens), "--log-level", "info",
        "--batch-wait-ms", str(wait_ms),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        match = re.search(r"ready on (http://[\d.]+:\d+)", "".join(lines))
        if match:
            return process, match.group(1), lines
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the server did not start:\n{''.join(lines)[-3000:]}")


def body(r: dict, max_tokens: int) -> dict:
    url = "data:image/png;base64," + base64.b64encode(r["png"]).decode()
    content = [{"type": "text", "text": r["question"]}, {"type": "image_url", "image_url": {"url": url}}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}


def load(url: str, requests: list[dict], clients: int, max_tokens: int) -> dict:
    """`clients` closed-loop clients sharing the request list; wall time and per-request latencies."""
    bodies = [body(r, max_tokens) for r in requests]
    latencies: list[float] = []
    answers: dict[int, str] = {}
    lock = threading.Lock()
    next_index = iter(range(len(bodies)))

    def client():
        with httpx.Client(base_url=url, timeout=600) as http:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                response = http.post("/v1/chat/completions", json=bodies[i])
                response.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    answers[i] = response.json()["choices"][0]["message"]["content"]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    return {"wall": time.perf_counter() - start, "latencies": latencies, "requests": len(bodies), "answers": answers}


def steps(url: str) -> tuple[int, int]:
    """(decode steps, row-steps: live rows summed over steps) the server has run so far."""
    text = httpx.get(url + "/metrics").text
    counts = dict(re.findall(r"^llava_serve_(decode_steps|row_steps)_total (\d+)$", text, re.M))
    return int(counts["decode_steps"]), int(counts["row_steps"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="the server's --batch-wait-ms")
    parser.add_argument("--server-log", help="write the server's log (one line per batch) here")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    tok = synthetic_tokenizer()
    model = llava_jax.random_model(demo(), seed=0, tokenizer=tok)
    requests = make_requests(args.requests, model.config.vision.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "demo-random")
        model.save(model_dir)
        process, url, lines = start_server(model_dir, args.max_batch, args.max_tokens, args.batch_wait_ms)
        try:
            base = sequential(model, requests, args.max_tokens)
            expected = [model.chat(r["image"], r["question"], max_new_tokens=args.max_tokens)[0] for r in requests]
            rows = [("sequential Llava.chat", base, None)]
            rows.append(
                (
                    f"Llava.chat, {args.max_batch} per call",
                    batched(model, requests, args.max_tokens, args.max_batch),
                    None,
                )
            )
            for clients in args.clients:
                for _ in range(3):  # the same load first, until (batch size, prompt length) shapes are compiled
                    load(url, requests, clients, args.max_tokens)
                before = steps(url)
                result = load(url, requests, clients, args.max_tokens)
                after = steps(url)
                wrong = sum(result["answers"][i] != expected[i] for i in range(len(requests)))
                mean_rows = (after[1] - before[1]) / max(1, after[0] - before[0])
                rows.append((f"serve, {clients} clients", result, (mean_rows, wrong)))
        finally:
            process.terminate()
            process.wait(30)
            if args.server_log:
                with open(args.server_log, "w") as f:
                    f.write("".join(lines))
    base_rate = base["requests"] / base["wall"]
    setting = f"--max-batch {args.max_batch}, --batch-wait-ms {args.batch_wait_ms}"
    print(f"\nload average (1, 5, 15 min): at start {load_before}, at end {os.getloadavg()}")
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, {args.requests} requests, max_tokens {args.max_tokens}, {setting}"
    )
    print("| run | requests/s | x sequential | latency p50 s | p95 s | mean rows/step | answers != chat |")
    print("|---|---|---|---|---|---|---|")
    for name, r, extra in rows:
        rate = r["requests"] / r["wall"]
        mean_rows, wrong = extra if extra else ("", "")
        mean_rows = f"{mean_rows:.1f}" if extra else ""
        print(
            f"| {name} | {rate:.1f} | {rate / base_rate:.2f} | {statistics.median(r['latencies']):.3f} | "
            f"{percentile(r['latencies'], 0.95):.3f} | {mean_rows} | {wrong} |"
        )


if __name__ == "__main__":
    main()
