"""The engine's warm-up: every program steady state calls is compiled before the server says it is ready.

Letters as in `llava_jax.serve.batching`. At the shape of one prompt (default:
a one-image question) and of the same prompt one length bucket longer (a
question a sentence longer), with one `max_tokens` (default: the default),
for every row bucket B: a state and a decode chunk, the prefill and the
admission of every b <= B, marking rows ended, and growing B to every larger
bucket. A request of another length bucket, or one that needs a longer cache,
compiles its programs when it first comes.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from llava_jax.infer.continuous import end_rows
from llava_jax.serve.jobs import Job, Sampling

log = logging.getLogger("llava_jax.serve")


def warm_up(engine, prompt_ids: np.ndarray | None = None, max_tokens: int | None = None) -> float:
    """Compile `engine`'s steady-state programs for int32[L] `prompt_ids` and `max_tokens`; returns the seconds."""
    from llava_jax.serve.batching import PAD_TO_MULTIPLE

    start = time.perf_counter()
    if prompt_ids is None:
        prompt_ids = engine.encode([("user", "What is in the image?")], has_image=True)
    n = max_tokens or engine.default_max_tokens(len(prompt_ids))
    longer = np.concatenate([np.full(PAD_TO_MULTIPLE, engine.bos_id, np.int32), prompt_ids])
    for ids in (prompt_ids, longer):
        _warm(engine, ids, n)
    seconds = time.perf_counter() - start
    log.info("warm-up: compiled batches of %s rows in %.1f s", engine.buckets, seconds)
    return seconds


def _warm(engine, prompt_ids: np.ndarray, n: int) -> None:
    config = engine.config
    pixels = np.zeros((config.vision.image_size,) * 2 + (3,), np.float32)
    has_image = bool((prompt_ids == config.image_token_index).any())

    def jobs(k):
        return [Job(prompt_ids, pixels if has_image else None, n, Sampling(), (), _drop) for _ in range(k)]

    for rows in engine.buckets:
        # A state of `rows` rows filled by admissions of every smaller bucket, then decoded.
        for b in [b for b in engine.buckets if b <= rows]:
            engine._run = None
            if b < rows:
                engine._admit(jobs(rows - b), count=False)
            engine._admit(jobs(b), count=False)
            engine._decode_chunk(steps=2, count=False)
            if engine._run is not None:  # rows the host ends (a stop string, a cancelled request)
                engine._run.state = end_rows(engine._run.state, np.zeros(rows, bool))
        # Growing to every larger bucket.
        for bigger in [k for k in engine.buckets if k > rows]:
            engine._run = None
            engine._admit(jobs(rows), count=False)
            engine._admit(jobs(bigger - rows), count=False)
        engine._run = None


def _drop(kind, payload) -> None:
    """The sink of warm-up jobs."""
