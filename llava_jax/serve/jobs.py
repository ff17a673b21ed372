"""A request as the engine sees it (`Job`, its `Sampling`), and the host side of its row while it decodes (`Row`)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import numpy as np

from llava_jax.serve.text import AnswerText


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Sampling settings of one request (temperature 0: greedy, top_p and seed ignored)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def batch_key(self):
        """Requests with equal keys may share a batch; a seeded sampled request gets a key of its own."""
        if self.temperature == 0:
            return ("greedy",)
        if self.seed is not None:
            return ("seeded", object())
        return ("sample", self.temperature, self.top_p)


@dataclasses.dataclass
class Job:
    """One request as the engine sees it.

    ids: int32[L] prompt (`image_seq_length` placeholders where the image goes);
    pixels: float32[S, S, 3] preprocessed image or None; `sink(kind, payload)` is
    called from the worker thread with ("delta", str), ("done", dict) or
    ("error", str); it must not block.
    """

    ids: np.ndarray
    pixels: np.ndarray | None
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...]
    sink: Callable[[str, object], None]
    stream: bool = False  # send ("delta", text) as the answer grows (else only "done")
    request_id: str = ""
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    enqueued: float = dataclasses.field(default_factory=time.monotonic)


class QueueFull(Exception):
    """More requests are waiting than the server takes."""


class NotReady(Exception):
    """The engine is still warming up, or shutting down."""


class Row:
    """One request's row in the running decode state: which tokens it keeps and what it has sent."""

    def __init__(self, job: Job, text: AnswerText):
        self.job = job
        self.text = text
        self.kept: np.ndarray = np.zeros(0, np.int32)
        self.checked = 1
        self.finished = False
        self.finish_reason: str | None = None  # None once finished: cancelled

    def advance(self, tokens: np.ndarray, stop_ids) -> bool:
        """Look at the row's int32 tokens so far; send new text; True when the row finished now."""
        job = self.job
        if job.cancelled.is_set():
            self.finished, self.finish_reason = True, None
            return True
        reason = None
        hits = np.nonzero(np.isin(tokens, stop_ids))[0] if len(stop_ids) else []
        if len(hits) and hits[0] < job.max_tokens:
            tokens, reason = tokens[: hits[0] + 1], "stop"
        elif len(tokens) >= job.max_tokens:
            tokens, reason = tokens[: job.max_tokens], "length"
        k = self.text.stop_token(tokens, self.checked) if self.text.stop_strings else None
        if k is not None:
            tokens, reason = tokens[:k], "stop"
        self.checked = len(tokens) + 1
        self.kept = tokens
        if reason is None:
            delta = self.text.delta(tokens) if job.stream else ""
            if delta:
                job.sink("delta", delta)
            return False
        self.finish(reason)
        return True

    def finish(self, reason: str) -> None:
        """Send the rest of the text and the answer."""
        delta = self.text.delta(self.kept, final=True) if self.job.stream else ""
        if delta:
            self.job.sink("delta", delta)
        self.finished, self.finish_reason = True, reason
        self.job.sink(
            "done",
            {
                "finish_reason": reason,
                "text": self.text.final(self.kept),
                "prompt_tokens": len(self.job.ids),
                "completion_tokens": len(self.kept),
            },
        )
