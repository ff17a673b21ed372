"""Batched, resumable answering of evaluation items.

The runner knows nothing about models: it renders each item's prompt, groups
items into batches, hands them to an `Answerer` and appends the answers to a
JSON-lines file as each batch finishes, so an interrupted run resumes where it
stopped. CPU work for batch k+1 (image decoding, preprocessing, tokenising)
overlaps the model call for batch k.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from PIL import Image
from tqdm import tqdm

from llava_jax.eval import prompts
from llava_jax.eval.records import Item, answer_record, load_answers


@dataclasses.dataclass(frozen=True)
class Request:
    """One generation request.

    prompt: the full conversation prompt, with one `<image>` marker where the image goes.
    image: the PIL image (mode as the benchmark's reference script leaves it), or None.
    max_new_tokens: the decoding budget of the benchmark.
    """

    prompt: str
    image: Image.Image | None
    max_new_tokens: int


@runtime_checkable
class Answerer(Protocol):
    """Greedy answers for batches of requests.

    `prepare` does the CPU-side work and may run on a background thread;
    `answer` runs the model on what `prepare` returned and gives one stripped
    answer string per request, in order.
    """

    model_id: str

    def prepare(self, requests: Sequence[Request]) -> Any: ...

    def answer(self, prepared: Any) -> list[str]: ...


class FunctionAnswerer:
    """An `Answerer` from a plain function `requests -> answers` (tests, baselines)."""

    def __init__(self, fn: Callable[[Sequence[Request]], list[str]], model_id: str = "fn"):
        self.fn = fn
        self.model_id = model_id

    def prepare(self, requests: Sequence[Request]) -> Sequence[Request]:
        return requests

    def answer(self, prepared: Sequence[Request]) -> list[str]:
        return list(self.fn(prepared))


@dataclasses.dataclass
class RunStats:
    """What a run did: counts, wall time and throughput (questions/s)."""

    total: int
    reused: int
    answered: int
    seconds: float
    first_batch_seconds: float
    batches: int
    first_batch_size: int = 0

    @property
    def questions_per_second(self) -> float:
        """Answered questions over the wall time of this run (compilation included)."""
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_questions_per_second(self) -> float:
        """Throughput after the first batch, which pays for compilation."""
        rest = self.seconds - self.first_batch_seconds
        if self.batches < 2 or rest <= 0:
            return self.questions_per_second
        return (self.answered - self.first_batch_size) / rest

    def as_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "questions": self.total,
            "reused_from_previous_run": self.reused,
            "answered_this_run": self.answered,
            "seconds": round(self.seconds, 3),
            "questions_per_second": round(self.questions_per_second, 4),
            "steady_questions_per_second": round(self.steady_questions_per_second, 4),
            "batches": self.batches,
        }


def make_batches(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
    """Consecutive batches of at most `batch_size`, never mixing image and text-only items.

    Keeping question order keeps the answer file in question-file order (the
    POPE scorer relies on that, as in the reference); homogeneous batches keep
    the model's image count per batch static.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches: list[list[Item]] = []
    for item in items:
        last = batches[-1] if batches else None
        if last is None or len(last) == batch_size or (last[0].image is None) != (item.image is None):
            batches.append([item])
        else:
            last.append(item)
    return batches


# Image decoding and resizing release the GIL, so a few threads keep up with
# a fast accelerator where one would not.
IMAGE_THREADS = max(1, min(16, os.cpu_count() or 1))


def _requests(
    batch: Sequence[Item],
    template: str,
    max_new_tokens: int,
    workers: ThreadPoolExecutor,
) -> list[Request]:
    images = list(workers.map(lambda it: it.image() if it.image is not None else None, batch))
    return [
        Request(
            prompt=prompts.render_prompt(item.message, template),
            image=image,
            max_new_tokens=max_new_tokens,
        )
        for item, image in zip(batch, images)
    ]


def run_items(
    items: Sequence[Item],
    answerer: Answerer,
    answers_path: str,
    *,
    batch_size: int,
    max_new_tokens: int,
    template: str = "vicuna_v1",
    progress: bool = True,
    desc: str = "eval",
) -> RunStats:
    """Answer every item not yet in `answers_path`, appending one line per answer.

    Returns the run's statistics; the file then holds an answer for every item.
    """
    keys = [item.key for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError("item keys must be unique within a run")
    os.makedirs(os.path.dirname(os.path.abspath(answers_path)), exist_ok=True)
    done = load_answers(answers_path, repair=True)
    for item in items:
        previous = done.get(item.key)
        if previous is not None and previous.get("question_id") != item.question_id:
            raise ValueError(
                f"{answers_path} was written for other questions (key {item.key}: question_id "
                f"{previous.get('question_id')!r}, expected {item.question_id!r}); use another --out"
            )
    pending = [item for item in items if item.key not in done]
    batches = make_batches(pending, batch_size)
    stats = RunStats(
        total=len(items),
        reused=len(items) - len(pending),
        answered=0,
        seconds=0.0,
        first_batch_seconds=0.0,
        batches=len(batches),
    )
    if not batches:
        return stats

    start = time.perf_counter()
    with (
        tqdm(
            total=len(items),
            initial=stats.reused,
            desc=desc,
            unit="q",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=not progress,
        ) as bar,
        ThreadPoolExecutor(max_workers=1) as pool,
        ThreadPoolExecutor(max_workers=IMAGE_THREADS) as workers,
        open(answers_path, "a", encoding="utf-8") as out,
    ):

        def submit(i: int) -> Future:
            return pool.submit(
                lambda b: answerer.prepare(_requests(b, template, max_new_tokens, workers)),
                batches[i],
            )

        upcoming = submit(0)
        for i, batch in enumerate(batches):
            prepared = upcoming.result()
            if i + 1 < len(batches):
                upcoming = submit(i + 1)
            texts = answerer.answer(prepared)
            if len(texts) != len(batch):
                raise RuntimeError(f"answerer returned {len(texts)} answers for {len(batch)} requests")
            out.write(
                "".join(json.dumps(answer_record(it, t, answerer.model_id)) + "\n" for it, t in zip(batch, texts))
            )
            out.flush()
            stats.answered += len(batch)
            if i == 0:
                stats.first_batch_seconds = time.perf_counter() - start
                stats.first_batch_size = len(batch)
            bar.update(len(batch))
            bar.set_postfix(qps=f"{stats.answered / (time.perf_counter() - start):.2f}")
    stats.seconds = time.perf_counter() - start
    return stats
