"""The benchmarks of the LLaVA-1.5 evaluation suite and the paper's Model Zoo scores."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from llava_jax.eval import gpt_graded, gqa, mmbench, mme, pope, scienceqa, seed, vqa
from llava_jax.eval.common import DataConfig, Score
from llava_jax.eval.records import Item

Loader = Callable[[DataConfig], list[Item]]
Scorer = Callable[[Sequence[Item], Mapping[str, dict], DataConfig, str], Score]

# `model_vqa_loader.py` decodes at most 128 tokens; `model_vqa.py`,
# `model_vqa_science.py` and `model_vqa_mmbench.py` at most 1024.
SHORT, LONG = 128, 1024


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """How to load, ask and score one benchmark.

    zoo: the Model Zoo value for (7B, 13B) and the local metric it compares to
        (None when the paper's figure comes from a server or a GPT grader).
    headline: metrics printed in the summary table (results.json has all).
    """

    name: str
    title: str
    load: Loader
    score: Scorer
    max_new_tokens: int
    zoo: tuple[float, float]
    zoo_metric: str | None
    zoo_note: str
    headline: tuple[str, ...]


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "vqav2",
            "VQAv2 test-dev",
            vqa.load_vqav2,
            vqa.score_vqav2,
            SHORT,
            (78.5, 80.0),
            None,
            "EvalAI server, test-dev",
            ("accuracy",),
        ),
        Benchmark(
            "gqa",
            "GQA testdev-balanced",
            gqa.load,
            gqa.score,
            SHORT,
            (62.0, 63.3),
            "accuracy",
            "",
            ("accuracy", "accuracy_normalized"),
        ),
        Benchmark(
            "vizwiz",
            "VizWiz test",
            vqa.load_vizwiz,
            vqa.score_vizwiz,
            SHORT,
            (50.0, 53.6),
            None,
            "EvalAI server, test",
            ("accuracy",),
        ),
        Benchmark(
            "scienceqa",
            "ScienceQA-IMG test",
            scienceqa.load,
            scienceqa.score,
            LONG,
            (66.8, 71.6),
            "img_accuracy",
            "unanswered problems count as wrong (img_accuracy_answered leaves them out)",
            ("img_accuracy", "accuracy", "img_accuracy_answered"),
        ),
        Benchmark(
            "textvqa",
            "TextVQA val",
            vqa.load_textvqa,
            vqa.score_textvqa,
            SHORT,
            (58.2, 61.3),
            "accuracy",
            "",
            ("accuracy",),
        ),
        Benchmark(
            "pope",
            "POPE (COCO)",
            pope.load,
            pope.score,
            SHORT,
            (85.9, 85.9),
            "mean_f1",
            "F1 averaged over the three splits",
            (
                "mean_f1",
                "mean_accuracy",
                "mean_yes_ratio",
                "adversarial/f1",
                "popular/f1",
                "random/f1",
            ),
        ),
        Benchmark(
            "mme",
            "MME",
            mme.load,
            mme.score,
            SHORT,
            (1510.7, 1531.3),
            "perception",
            "perception total",
            ("perception", "cognition"),
        ),
        Benchmark(
            "mmbench",
            "MMBench dev",
            mmbench.load,
            mmbench.score,
            LONG,
            (64.3, 67.7),
            "circular_accuracy",
            "server circular evaluation",
            ("circular_accuracy", "accuracy", "unparsed"),
        ),
        Benchmark(
            "mmbench_cn",
            "MMBench-CN dev",
            mmbench.load_cn,
            mmbench.score_cn,
            LONG,
            (58.3, 63.6),
            "circular_accuracy",
            "server circular evaluation",
            ("circular_accuracy", "accuracy", "unparsed"),
        ),
        Benchmark(
            "seed",
            "SEED-Bench",
            seed.load,
            seed.score,
            SHORT,
            (58.6, 61.6),
            "accuracy",
            "all questions, video ones on their middle frame; unanswered ones count as wrong",
            ("accuracy", "accuracy_answered", "image_accuracy", "video_accuracy"),
        ),
        Benchmark(
            "llava_bench",
            "LLaVA-Bench in-the-wild",
            gpt_graded.load_llava_bench,
            gpt_graded.score_llava_bench,
            LONG,
            (65.4, 72.5),
            None,
            "GPT-4 graded",
            (),
        ),
        Benchmark(
            "mmvet",
            "MM-Vet",
            gpt_graded.load_mmvet,
            gpt_graded.score_mmvet,
            LONG,
            (31.1, 36.1),
            None,
            "GPT-4 graded",
            (),
        ),
    )
}

SIZES = ("7B", "13B")


def zoo_value(benchmark: Benchmark, size: str | None) -> float | None:
    """The Model Zoo figure for a model size ("7B" / "13B"), None when unknown."""
    if size is None:
        return None
    size = size.upper()
    if size not in SIZES:
        raise ValueError(f"model size must be one of {SIZES}, got {size!r}")
    return benchmark.zoo[SIZES.index(size)]
