"""One benchmark end to end: load questions, answer (resumably), score, write results.json."""

from __future__ import annotations

import os
import time

from llava_jax.eval.common import DataConfig
from llava_jax.eval.records import load_answers, write_json
from llava_jax.eval.registry import BENCHMARKS, Benchmark, zoo_value
from llava_jax.eval.runner import Answerer, run_items

ANSWERS_FILE = "answers.jsonl"
RESULTS_FILE = "results.json"


def evaluate(
    benchmark: str,
    answerer: Answerer | None,
    data: DataConfig,
    out_dir: str,
    *,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    template: str = "vicuna_v1",
    model_size: str | None = None,
    model_path: str | None = None,
    progress: bool = True,
) -> dict:
    """Run `benchmark` and return (and write to `out_dir/results.json`) every figure.

    `batch_size` defaults to the answerer's own (`ModelAnswerer.batch_size`), else 8.
    With `answerer=None` nothing is generated: the answers already in
    `out_dir/answers.jsonl` are scored (re-scoring a finished run).
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {sorted(BENCHMARKS)}")
    bench = BENCHMARKS[benchmark]
    if batch_size is None:
        batch_size = getattr(answerer, "batch_size", None) or 8
    os.makedirs(out_dir, exist_ok=True)
    items = bench.load(data)
    answers_path = os.path.join(out_dir, ANSWERS_FILE)
    stats = None
    decode_budget = max_new_tokens or bench.max_new_tokens
    if answerer is not None:
        stats = run_items(
            items,
            answerer,
            answers_path,
            batch_size=batch_size,
            max_new_tokens=decode_budget,
            template=template,
            progress=progress,
            desc=benchmark,
        )
    answers = load_answers(answers_path)
    score = bench.score(items, answers, data, out_dir)
    value = score.metrics.get(bench.zoo_metric) if bench.zoo_metric else None
    results = {
        "benchmark": benchmark,
        "title": bench.title,
        "model": model_path,
        "model_id": getattr(answerer, "model_id", None),
        "data_dir": data.data_dir,
        "questions": len(items),
        "answered": sum(item.key in answers for item in items),
        "settings": {
            "template": template,
            "batch_size": batch_size,
            "max_new_tokens": decode_budget,
            "temperature": 0.0,
            "limit": data.limit,
            "all_rounds": data.all_rounds,
        },
        "metrics": score.metrics,
        "files": {"answers": answers_path, **score.files},
        "notes": score.notes,
        "paper": {
            "size": model_size,
            "value": zoo_value(bench, model_size),
            "metric": bench.zoo_metric,
            "ours": value,
            "note": bench.zoo_note,
        },
        "throughput": stats.as_dict() if stats is not None else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(os.path.join(out_dir, RESULTS_FILE), results, indent=2)
    return results


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(results: dict) -> str:
    """A plain-text summary: headline metrics beside the Model Zoo value."""
    bench: Benchmark = BENCHMARKS[results["benchmark"]]
    paper = results["paper"]
    size = paper["size"] or "?"
    lines = [f"{bench.title}: {results['answered']}/{results['questions']} answered"]
    if results.get("throughput"):
        t = results["throughput"]
        lines.append(
            f"throughput: {t['questions_per_second']:.3f} questions/s "
            f"({t['steady_questions_per_second']:.3f} after the first batch), "
            f"{t['answered_this_run']} answered in {t['seconds']:.1f} s"
        )
    rows = [(name, results["metrics"].get(name)) for name in bench.headline]
    rows = [(n, v) for n, v in rows if v is not None]
    width = max([len(n) for n, _ in rows] + [len("metric"), 12])
    lines.append(f"{'metric':<{width}}  {'ours':>10}  {'paper ' + size:>12}")
    for name, value in rows:
        paper_value = paper["value"] if name == bench.zoo_metric else None
        lines.append(f"{name:<{width}}  {_fmt(value):>10}  {_fmt(paper_value):>12}")
    if bench.zoo_metric is None or bench.zoo_metric not in bench.headline:
        note = f" ({bench.zoo_note})" if bench.zoo_note else ""
        lines.append(f"{'paper figure' + note}: {_fmt(paper['value'])}")
    for name, path in results["files"].items():
        lines.append(f"{name}: {path}")
    lines.extend(results["notes"])
    return "\n".join(lines)
