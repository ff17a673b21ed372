"""The request queue and the batcher: requests waiting while a batch runs are decoded together.

Letters: B batch rows (a bucket: powers of two up to `max_batch`), T prompt
length (left padded to a multiple of 16, as `Llava.chat`), C cache length, N
new-token slots (C - T), S image side.

One worker thread owns the device. It takes the oldest waiting request and
every waiting request that can share its batch (greedy with greedy; sampled
with the same temperature and top_p; a sampled request with its own `seed`
runs alone, so that it draws exactly what `Llava.chat(seed=...)` draws), up to
`max_batch`, left-pads them as `generate` does, prefills them together and
runs the jitted decode loop (`llava_jax.infer.decode`) in chunks of
`chunk_tokens`. Between chunks it sends each row's new text to its request,
and ends a row that met its own limit: EOS, a stop sequence, its `max_tokens`,
or a cancelled request (that row's tokens are no longer computed once every
row is done, and the next batch starts). Rows are independent (positions and
masks per row), so a request's greedy answer is `Llava.chat`'s whatever it
shares a batch with.

Shapes are bucketed so that few programs compile: B to a power of two (filler
rows are one-token prompts, ended at once), T to a multiple of 16, and C to a
power of two capped just past the model's context; `warmup` compiles the
shapes a one-image question with the default `max_tokens` uses, for every B.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from llava_jax.infer.decode import decode, decode_layers_for, first_token, prefill, resolve_layout
from llava_jax.infer.generate import default_stop_ids
from llava_jax.infer.sampling import SamplingMode
from llava_jax.serve.text import AnswerText
from llava_jax.sharding import DEFAULT_RULES, batch_axes, mesh_context

log = logging.getLogger("llava_jax.serve")

PAD_TO_MULTIPLE = 16  # as `llava_jax.infer.chat`
MIN_NEW_SLOTS = 16
# Decode steps per call when no row streams or watches for stop sequences: the host only looks
# in to end rows at their own max_tokens and to drop cancelled ones.
QUIET_CHUNK = 64


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
    """One request as the batcher sees it.

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


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class Engine:
    """Owns the model on its worker thread; `submit` queues a `Job`, the thread batches and decodes.

    Args:
      model: a loaded `llava_jax.Llava` with a tokenizer.
      template: the conversation template the model was trained with (for its stop string).
      max_batch: most rows decoded together.
      max_queue: most requests waiting; `submit` raises `QueueFull` past it.
      chunk_tokens: decode steps between looks at the text when a row streams or has stop sequences.
      batch_wait_s: while other requests are still being read (`arriving`), wait up to this long
        for them to join the batch; nothing is waited for when none is on its way.
    """

    def __init__(
        self,
        model,
        *,
        template,
        max_batch: int = 8,
        max_queue: int = 128,
        chunk_tokens: int = 8,
        batch_wait_s: float = 0.005,
        layout: str = "auto",
    ):
        if model.tokenizer is None:
            raise ValueError("serving needs a tokenizer: the model directory has none")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.config = model.config
        self.template = template
        self.max_queue = max_queue
        self.chunk_tokens = max(1, chunk_tokens)
        self.batch_wait_s = batch_wait_s
        self.context = self.config.llm.max_position_embeddings
        self.stop_ids = tuple(default_stop_ids(model))
        self.pad_id = self.config.llm.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.stop_ids[0] if self.stop_ids else 0
        self.bos_id = self.config.llm.bos_token_id if self.config.llm.bos_token_id is not None else self.pad_id
        # The template's stop string, unless EOS already covers it (as `chat` does).
        eos_text = model.tokenizer.eos_token
        self.template_stops = (template.stop_str,) if template.stop_str and template.stop_str != eos_text else ()
        shards = 1
        if model.mesh is not None:
            axes = batch_axes(getattr(model, "rules", DEFAULT_RULES))
            shards = int(np.prod([model.mesh.shape[a] for a in axes if a in model.mesh.shape]))
        buckets = {_round_up(min(_next_pow2(b), max_batch), shards) for b in range(1, max_batch + 1)}
        self.buckets = sorted(buckets)
        self.max_batch = max_batch
        self.unrolled = resolve_layout(layout, model) == "unrolled"
        self.tokenizer_lock = threading.Lock()  # HF fast tokenizers are not safe to share across threads
        self._cond = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._arriving = 0
        self.ready = threading.Event()
        self.failed: str | None = None
        self.stats = collections.Counter()
        self.batch_sizes = collections.Counter()

    # ------------------------------------------------------------------ queue
    def submit(self, job: Job) -> None:
        """Queue a request. Raises `NotReady` while warming up or stopping, `QueueFull` past `max_queue`."""
        if not self.ready.is_set() or self._stopping:
            raise NotReady("the model is still warming up" if not self._stopping else "the server is shutting down")
        with self._cond:
            if len(self._queue) >= self.max_queue:
                self.stats["rejected_queue_full"] += 1
                raise QueueFull(f"{len(self._queue)} requests are already waiting (--max-queue {self.max_queue})")
            self._queue.append(job)
            self.stats["requests"] += 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def arriving(self):
        """Context for a request being read and encoded before `submit`: a batch about to start
        waits (up to `batch_wait_s`) for it rather than leaving it for the next batch."""
        with self._cond:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify_all()

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            deadline = time.monotonic() + self.batch_wait_s
            while self._arriving and len(self._queue) < self.max_batch and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            if self._stopping:
                return None
            head = self._queue.popleft()
            batch, skipped = [head], []
            key = head.sampling.batch_key()
            if key[0] != "seeded":
                while self._queue and len(batch) < self.max_batch:
                    job = self._queue.popleft()
                    (batch if job.sampling.batch_key() == key else skipped).append(job)
                self._queue.extendleft(reversed(skipped))
        live = []
        for job in batch:
            if job.cancelled.is_set():
                self.stats["cancelled"] += 1
            else:
                live.append(job)
        return live

    # ------------------------------------------------------------------ thread
    def start(self, warmup: bool = True, warmup_max_tokens: int | None = None) -> None:
        """Start the worker thread; it warms up (when asked, see `warmup`) and then sets `ready`."""
        args = (warmup, warmup_max_tokens)
        self._thread = threading.Thread(target=self._main, args=args, name="llava-serve-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests; the running batch ends, waiting requests get an error."""
        with self._cond:
            self._stopping = True
            waiting = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in waiting:
            job.sink("error", "the server is shutting down")
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self, warmup: bool, warmup_max_tokens: int | None) -> None:
        try:
            if warmup:
                self.warmup(max_tokens=warmup_max_tokens)
        except Exception as e:  # a model that cannot run at all: report, never serve
            log.exception("warm-up failed")
            self.failed = f"warm-up failed: {type(e).__name__}: {e}"
            return
        self.ready.set()
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self.run_batch(batch)
            except Exception as e:  # keep serving: the batch's requests get an error, the log the traceback
                log.exception("batch of %d rows failed", len(batch))
                self.stats["batch_errors"] += 1
                for job in batch:
                    job.sink("error", f"generation failed: {type(e).__name__}")

    def warmup(self, prompt_ids: np.ndarray | None = None, max_tokens: int | None = None) -> float:
        """Compile prefill and decode for every batch bucket at the shape of `prompt_ids` (default: a
        one-image question) and `max_tokens` (default: the default); returns the seconds it took."""
        start = time.perf_counter()
        if prompt_ids is None:
            prompt_ids = self.encode([("user", "What is in the image?")], has_image=True)
        pixels = np.zeros((self.config.vision.image_size,) * 2 + (3,), np.float32)
        has_image = bool((prompt_ids == self.config.image_token_index).any())
        for b in self.buckets:
            n = max_tokens or self.default_max_tokens(len(prompt_ids))
            jobs = [Job(prompt_ids, pixels if has_image else None, n, Sampling(), (), _drop) for _ in range(b)]
            self.run_batch(jobs, count=False, steps=2)
        seconds = time.perf_counter() - start
        log.info("warm-up: compiled batches of %s rows in %.1f s", self.buckets, seconds)
        return seconds

    # ------------------------------------------------------------------ model
    def encode(self, turns, *, has_image: bool, system: str | None = None) -> np.ndarray:
        """int32[L] prompt ids for `(role, text)` turns ending with the user's, the image in the first turn."""
        from llava_jax.data.encode import tokenizer_image_token
        from llava_jax.infer.chat import build_prompt

        template = self.template if system is None else dataclasses.replace(self.template, system=system)
        text = build_prompt(list(turns), has_image, template)
        with self.tokenizer_lock:
            ids = tokenizer_image_token(
                text,
                self.model.tokenizer,
                image_token_index=self.config.image_token_index,
                image_seq_length=self.config.image_seq_length,
            )
        return np.asarray(ids, np.int32)

    def default_max_tokens(self, prompt_len: int) -> int:
        """`Llava.chat`'s default: 512 new tokens, or what the context leaves."""
        return max(1, min(512, self.context - prompt_len))

    def _shapes(self, jobs: list[Job]) -> tuple[int, int, int]:
        b = next(k for k in self.buckets if k >= len(jobs))
        t = _round_up(max(len(j.ids) for j in jobs), PAD_TO_MULTIPLE)
        need = t + max(j.max_tokens for j in jobs)
        cap = _round_up(self.context, PAD_TO_MULTIPLE) + PAD_TO_MULTIPLE
        cache = _next_pow2(max(need, t + MIN_NEW_SLOTS))
        if cache > cap:
            cache = max(cap, need)
        return b, t, cache

    def _inputs(self, jobs: list[Job], b: int, t: int):
        ids = np.full((b, t), self.pad_id, np.int32)
        mask = np.zeros((b, t), bool)
        s = self.config.vision.image_size
        images = np.zeros((b, 1, s, s, 3), np.float32)
        for r in range(b):
            row = jobs[r].ids if r < len(jobs) else np.asarray([self.bos_id], np.int32)  # filler row
            ids[r, t - len(row) :] = row
            mask[r, t - len(row) :] = True
            if r < len(jobs) and jobs[r].pixels is not None:
                images[r, 0] = jobs[r].pixels
        return ids, mask, images

    def run_batch(self, jobs: list[Job], *, count: bool = True, steps: int | None = None) -> int:
        """Prefill `jobs` together and decode until each has its answer (sent through its sink).

        `steps` caps the decode steps (warm-up); `count` adds the batch to the statistics.
        Returns the tokens decoded per row (the longest row's count, cancelled rows stop early).
        """
        start = time.perf_counter()
        model, config = self.model, self.config
        b, t, cache_len = self._shapes(jobs)
        ids, mask, images = self._inputs(jobs, b, t)
        sampling = jobs[0].sampling
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4), "little")
        mode = SamplingMode.of(sampling.temperature, 0, sampling.top_p)
        consts = {
            "seed_key": jax.random.PRNGKey(seed),
            "temperature": jnp.float32(sampling.temperature or 1.0),
            "top_p": jnp.float32(sampling.top_p),
            "stop_ids": jnp.asarray(self.stop_ids or (-1,), jnp.int32),
            "pad_id": jnp.int32(self.pad_id),
        }
        n = cache_len - t
        rows = [
            _Row(job, AnswerText(model.tokenizer, set(self.stop_ids), self.template_stops + job.stop)) for job in jobs
        ]
        with mesh_context(model.mesh, model.rules):
            layers = decode_layers_for(model).layers if self.unrolled else None
            logits, cache, position = prefill(
                model.params, ids, images, mask, config=config, cache_len=cache_len, unrolled=self.unrolled
            )
            state = first_token(logits, cache, position, **consts, num_new=n, mode=mode, keep_logits=False)
            done = np.asarray(jax.device_get(state["done"])).copy()
            done[len(jobs) :] = True
            state = _with_done(state, done)
            watch = any(row.job.stream or row.text.stop_strings for row in rows)
            chunk = self.chunk_tokens if watch else max(self.chunk_tokens, QUIET_CHUNK)
            while True:
                out, done, step = jax.device_get((state["out"], state["done"], state["step"]))
                done, step = np.array(done), int(step)
                changed = False
                with self.tokenizer_lock:
                    for r, row in enumerate(rows):
                        if row.finished:
                            continue
                        if row.advance(out[r, :step], self.stop_ids, final_step=steps is not None and step >= steps):
                            self.stats["tokens"] += len(row.kept) if count else 0
                            self.stats["cancelled" if row.finish_reason is None else "completed"] += int(count)
                        if row.finished and not done[r]:
                            done[r], changed = True, True
                live = [row.job.max_tokens for row in rows if not row.finished]
                if not live or step >= n:
                    break
                if changed:
                    state = _with_done(state, done)
                limit = min(step + chunk, max(live), n)
                state = decode(
                    model.params,
                    layers,
                    state,
                    jnp.int32(limit),
                    prompt_mask=jnp.asarray(mask),
                    **consts,
                    config=config,
                    mode=mode,
                )
        for row in rows:  # the cache ran out (cannot happen with checked max_tokens, but never hang a client)
            if not row.finished:
                row.finish("length")
        if count:
            self.stats["batches"] += 1
            self.stats["rows"] += len(jobs)
            self.batch_sizes[len(jobs)] += 1
            log.info(
                "batch of %d rows (bucket %d, %s): prompt %d, cache %d, %d steps, %.3f s",
                len(jobs),
                b,
                "greedy" if mode.greedy else "sampled",
                t,
                cache_len,
                step,
                time.perf_counter() - start,
            )
        return step


def _with_done(state: dict, done: np.ndarray) -> dict:
    """The decode state with `done` bool[B] replaced, placed as the loop's own output is (an array
    placed differently would make `decode` compile a second time)."""
    return {**state, "done": jax.device_put(done, state["done"].sharding)}


def _drop(kind, payload) -> None:
    """The sink of warm-up jobs."""


class _Row:
    """One request's row in a running batch: which tokens it keeps and what it has sent."""

    def __init__(self, job: Job, text: AnswerText):
        self.job = job
        self.text = text
        self.kept: np.ndarray = np.zeros(0, np.int32)
        self.checked = 1
        self.finished = False
        self.finish_reason: str | None = None

    def advance(self, tokens: np.ndarray, stop_ids, final_step: bool = False) -> bool:
        """Look at the row's tokens so far; send new text; True when the row finished now."""
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
        if reason is None and final_step:
            reason = "length"
        if reason is None:
            delta = self.text.delta(tokens) if job.stream else ""
            if delta:
                job.sink("delta", delta)
            return False
        self.finish(reason)
        return True

    def finish(self, reason: str) -> None:
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
