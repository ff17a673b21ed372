"""LLaVA-1.5 evaluation: the paper's benchmarks with the reference prompts and scoring.

`evaluate(name, answerer, DataConfig(data_dir), out_dir)` runs one benchmark;
any object with `prepare(requests)` / `answer(prepared)` can answer
(`ModelAnswerer` wraps a model from `llava_jax.load`).
"""

from llava_jax.eval.common import DataConfig, EvalDataError, Score
from llava_jax.eval.evaluate import evaluate, format_table
from llava_jax.eval.normalize import normalize_answer, vqa_soft_score
from llava_jax.eval.records import Item
from llava_jax.eval.registry import BENCHMARKS, Benchmark
from llava_jax.eval.runner import (
    Answerer,
    FunctionAnswerer,
    Request,
    RunStats,
    run_items,
)

__all__ = [
    "BENCHMARKS",
    "Answerer",
    "Benchmark",
    "DataConfig",
    "EvalDataError",
    "FunctionAnswerer",
    "Item",
    "Request",
    "RunStats",
    "Score",
    "evaluate",
    "format_table",
    "normalize_answer",
    "run_items",
    "vqa_soft_score",
]
