"""The request queue and the engine: continuous batching, requests join the running decode between chunks.

Letters: B rows of the running state (a bucket: powers of two up to
`max_batch`), b requests admitted together (also a bucket), T their prompt
length (left padded to a multiple of 16, as `Llava.chat`), C cache slots per
row, S image side.

One worker thread owns the device and one running decode state
(`llava_jax.infer.continuous`), whose rows each have their own cache slots,
positions and slot mask. Between decode chunks it admits waiting requests
into free rows: it prefills the newcomers together (b rows, the filler ones
one-token prompts) and writes their caches into their rows, growing B (and C,
for a longer request) to the next bucket when the free rows are too few; the
other rows go on where they were. A chunk stops after `chunk_tokens` steps
when a row streams or watches for stop sequences, after `ADMIT_CHUNK` when
rows are free (a request that arrives meanwhile waits at most that long, and
the chunk queued behind it), and as soon as any row ends on the device (EOS,
its `max_tokens`), so that its answer goes out at once and its row is free for
the next request. Between chunks each row's new
text goes to its request, and a row ends on the host for a stop sequence or a
cancelled request; an ended row is free. When no row is live the state is
dropped, and the next request starts a new one sized for what waits.

Rows that share a state must share the sampling settings: greedy with greedy,
sampled with the same temperature and top_p. While the oldest waiting
request cannot join the running state, nothing joins it: it drains and the
next state starts with that request's settings. A sampled request with its
own `seed` runs alone in a one-row state, so that it draws exactly what
`Llava.chat(seed=...)` draws. A row's tokens depend only on its own prompt,
so a request's greedy answer is `Llava.chat`'s whatever shares the state.

Shapes are bucketed so that few programs compile: B and b to powers of two,
T to a multiple of 16, C to a power of two capped just past the model's
context; `warmup` (`llava_jax.serve.warmup`) compiles what steady state calls.

One decode call stays queued ahead of the host: the worker queues the next
chunk before it reads the last one's tokens, so the device keeps decoding
while the worker waits for the interpreter (the HTTP threads hold it most of
the time) and answers. A row the host ends meanwhile decodes one chunk more
(its tokens are dropped); a row admitted after a chunk was queued is not
that chunk's.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from llava_jax.infer.continuous import admit, decode_rows, empty_rows, end_rows, resize_rows
from llava_jax.infer.decode import decode_layers_for, prefill, resolve_layout
from llava_jax.infer.generate import default_stop_ids
from llava_jax.infer.sampling import SamplingMode
from llava_jax.serve.jobs import Job, NotReady, QueueFull, Row, Sampling
from llava_jax.serve.text import AnswerText
from llava_jax.sharding import DEFAULT_RULES, batch_axes, mesh_context

__all__ = ["Engine", "Job", "NotReady", "QueueFull", "Sampling"]

log = logging.getLogger("llava_jax.serve")

PAD_TO_MULTIPLE = 16  # as `llava_jax.infer.chat`
MIN_NEW_SLOTS = 16
# Decode steps per chunk while rows are free and no row streams: a request arriving meanwhile
# joins after at most this many steps.
ADMIT_CHUNK = 16


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclasses.dataclass
class _Run:
    """The running decode state and the host's view of its rows (None: free)."""

    state: dict
    rows: list
    key: tuple
    mode: SamplingMode
    consts: dict

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.state["valid"].shape)

    def live(self) -> int:
        return sum(row is not None for row in self.rows)


@dataclasses.dataclass
class _Chunk:
    """A queued decode call: its run, the run's rows when it was queued, and its report (device arrays)."""

    run: _Run
    rows: list
    report: dict


class Engine:
    """Owns the model on its worker thread; `submit` queues a `Job`, the thread admits and decodes.

    Args:
      model: a loaded `llava_jax.Llava` with a tokenizer.
      template: the conversation template the model was trained with (for its stop string).
      max_batch: most rows decoded together.
      max_queue: most requests waiting; `submit` raises `QueueFull` past it.
      chunk_tokens: decode steps between looks at the text when a row streams or has stop sequences.
      batch_wait_s: when no row is decoding and other requests are still being read
        (`arriving`), wait up to this long for them to start together.
      layout: decoder weight/cache layout (`llava_jax.infer.decode.resolve_layout`).
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
        self._run: _Run | None = None
        self._greedy_consts: dict | None = None
        self.ready = threading.Event()
        self.failed: str | None = None
        self.stats = collections.Counter()
        self.batch_sizes = collections.Counter()  # decode chunks by live rows

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
        """Context for a request being read and encoded before `submit`: a state about to start
        waits (up to `batch_wait_s`) for it rather than starting without it."""
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

    def _take(self, run: _Run | None, wait: bool = True) -> list[Job] | None:
        """The waiting requests to admit now (oldest first): with no running state, block for one
        (unless not `wait`) and take those that share its settings; else those that may join `run`'s
        free rows (none while the oldest waiting one may not). None when stopping with nothing running."""
        with self._cond:
            if run is None:
                if not wait and not self._queue:
                    return None if self._stopping else []
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                deadline = time.monotonic() + self.batch_wait_s
                while self._arriving and len(self._queue) < self.max_batch and time.monotonic() < deadline:
                    self._cond.wait(max(0.0, deadline - time.monotonic()))
                if self._stopping or not self._queue:
                    return None if self._stopping else []
                key, free = self._queue[0].sampling.batch_key(), self.max_batch
            else:
                free = self.max_batch - run.live()
                if self._stopping or not free or not self._queue:
                    return []
                key = run.key
                if key[0] == "seeded" or self._queue[0].sampling.batch_key() != key:
                    return []
            taken, skipped = [], []
            while self._queue and len(taken) < free:
                job = self._queue.popleft()
                if job.cancelled.is_set():
                    self.stats["cancelled"] += 1
                elif job.sampling.batch_key() == key or (not taken and run is None):
                    taken.append(job)
                    if key[0] == "seeded":
                        break
                else:
                    skipped.append(job)
            self._queue.extendleft(reversed(skipped))
        return taken

    # ------------------------------------------------------------------ thread
    def start(self, warmup: bool = True, warmup_max_tokens: int | None = None) -> None:
        """Start the worker thread; it warms up (when asked, see `warmup`) and then sets `ready`."""
        args = (warmup, warmup_max_tokens)
        self._thread = threading.Thread(target=self._main, args=args, name="llava-serve-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests; running rows finish, waiting requests get an error."""
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
        # One decode call stays queued ahead of the host: the next chunk is queued before the last
        # one's tokens are read and answered, so the device does not wait while this thread waits
        # for the interpreter (the HTTP threads hold it most of the time).
        pending: _Chunk | None = None
        while True:
            jobs = self._take(self._run, wait=pending is None)
            if jobs is None and pending is None:
                return
            jobs = jobs or []
            try:
                if jobs:
                    self._admit(jobs)
                chunk = self._dispatch() if self._run is not None else None
                if pending is not None:
                    self._process(pending)
                pending = chunk
            except Exception as e:  # keep serving: the rows' requests get an error, the log the traceback
                rows = [row.job for row in self._run.rows if row is not None] if self._run is not None else []
                failed = list({id(job): job for job in rows + jobs}.values())
                log.exception("decoding %d rows failed", len(failed))
                self.stats["batch_errors"] += 1
                self._run, pending = None, None
                for job in failed:
                    job.sink("error", f"generation failed: {type(e).__name__}")

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

    def _bucket(self, n: int) -> int:
        return next(k for k in self.buckets if k >= n)

    def _cache_len(self, t: int, max_tokens: int) -> int:
        """C for a row of T = `t` prompt slots that may make `max_tokens` tokens."""
        need = t + max_tokens
        cap = _round_up(self.context, PAD_TO_MULTIPLE) + PAD_TO_MULTIPLE
        cache = _next_pow2(max(need, t + MIN_NEW_SLOTS))
        return max(cap, need) if cache > cap else cache

    def _inputs(self, jobs: list[Job], b: int, t: int):
        """Left-padded int32[b, T] ids, bool[b, T] mask and float32[b, 1, S, S, 3] images (filler rows: BOS)."""
        ids = np.full((b, t), self.pad_id, np.int32)
        mask = np.zeros((b, t), bool)
        s = self.config.vision.image_size
        images = np.zeros((b, 1, s, s, 3), np.float32)
        for r in range(b):
            row = jobs[r].ids if r < len(jobs) else np.asarray([self.bos_id], np.int32)
            ids[r, t - len(row) :] = row
            mask[r, t - len(row) :] = True
            if r < len(jobs) and jobs[r].pixels is not None:
                images[r, 0] = jobs[r].pixels
        return ids, mask, images

    def _consts(self, sampling: Sampling) -> dict:
        """The sampling arguments of `admit` and `decode_rows` as device arrays (greedy's made once:
        each array made here is a dispatch, which would cost a request a good part of a millisecond)."""
        greedy = sampling.temperature == 0
        if greedy and self._greedy_consts is not None:
            return self._greedy_consts
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4), "little")
        consts = {
            "seed_key": jax.random.PRNGKey(0 if greedy else seed),  # unused when greedy
            "temperature": jnp.float32(sampling.temperature or 1.0),
            "top_p": jnp.float32(sampling.top_p),
            "stop_ids": jnp.asarray(self.stop_ids or (-1,), jnp.int32),
        }
        if greedy:
            self._greedy_consts = consts
        return consts

    def _new_run(self, sampling: Sampling, rows: int, cache_len: int) -> _Run:
        consts = self._consts(sampling)
        state = empty_rows(config=self.config, rows=rows, cache_len=cache_len, unrolled=self.unrolled)
        mode = SamplingMode.of(sampling.temperature, 0, sampling.top_p)
        return _Run(state, [None] * rows, sampling.batch_key(), mode, consts)

    def _admit(self, jobs: list[Job], *, count: bool = True) -> None:
        """Prefill `jobs` (all sharing one sampling key, at most the free rows) into free rows of the
        running state, starting one when none runs and growing it when it is too small."""
        model, config = self.model, self.config
        b = self._bucket(len(jobs))
        t = _round_up(max(len(j.ids) for j in jobs), PAD_TO_MULTIPLE)
        need_c = self._cache_len(t, max(j.max_tokens for j in jobs))
        with mesh_context(model.mesh, model.rules):
            run = self._run
            if run is None:
                run = self._new_run(jobs[0].sampling, b, need_c)
            else:
                rows, cache_len = run.shape
                grown = (max(rows, self._bucket(run.live() + len(jobs))), max(cache_len, need_c))
                if grown != (rows, cache_len):
                    run.state = resize_rows(run.state, rows=grown[0], cache_len=grown[1])
                    run.rows += [None] * (grown[0] - rows)
            self._run = run
            rows = run.shape[0]
            free = [r for r, row in enumerate(run.rows) if row is None][: len(jobs)]
            ids, mask, images = self._inputs(jobs, b, t)
            logits, cache, position = prefill(
                model.params, ids, images, mask, config=config, cache_len=t, unrolled=self.unrolled
            )
            targets = np.full(b, rows, np.int32)  # filler prompts go to row B: dropped
            targets[: len(jobs)] = free
            budget = np.ones(b, np.int32)
            budget[: len(jobs)] = [j.max_tokens for j in jobs]
            run.state = admit(run.state, logits, cache, position, mask, targets, budget, **run.consts, mode=run.mode)
        for r, job in zip(free, jobs):
            stops = self.template_stops + job.stop
            run.rows[r] = Row(job, AnswerText(model.tokenizer, set(self.stop_ids), stops))
        if count:
            self.stats["admissions"] += 1
            self.stats["rows"] += len(jobs)

    def _decode_chunk(self, *, steps: int | None = None, count: bool = True) -> None:
        """One decode call on the running state and its answers (`_dispatch`, then `_process`)."""
        self._process(self._dispatch(steps), count=count)

    def _dispatch(self, steps: int | None = None) -> _Chunk:
        """Queue one decode call on the running state (it runs while the host goes on)."""
        run = self._run
        live = [row for row in run.rows if row is not None]
        if steps is None:
            watch = any(row.job.stream or row.text.stop_strings for row in live)
            if watch:
                steps = self.chunk_tokens
            elif len(live) < self.max_batch:
                steps = max(self.chunk_tokens, ADMIT_CHUNK)
            else:  # no row is free: go on until one ends
                steps = run.shape[1]
        model = self.model
        with mesh_context(model.mesh, model.rules):
            layers = decode_layers_for(model).layers if self.unrolled else None
            run.state, report = decode_rows(
                model.params, layers, run.state, np.int32(steps), **run.consts, config=self.config, mode=run.mode
            )
        return _Chunk(run, list(run.rows), report)

    def _process(self, chunk: _Chunk, *, count: bool = True) -> None:
        """Wait for a queued decode call; send each of its rows' new text to their requests. Rows
        that ended are freed (the state is dropped when none is left); rows admitted or freed
        since the call was queued are not its own."""
        report = jax.device_get(chunk.report)
        out, made, done = report["out"], report["count"], report["done"]
        run = chunk.run
        ended = np.zeros(run.shape[0], bool)
        live = [r for r, row in enumerate(chunk.rows) if row is not None]
        with self.tokenizer_lock:
            for r in live:
                row = chunk.rows[r]
                if run.rows[r] is not row:
                    continue
                if not row.advance(out[r, : made[r]], self.stop_ids) and done[r]:
                    row.finish("length")  # ended on the device for a reason the host did not see
                if row.finished:
                    run.rows[r] = None
                    ended[r] = not done[r]
                    if count:
                        self.stats["tokens"] += len(row.kept)
                        self.stats["cancelled" if row.finish_reason is None else "completed"] += 1
        if count:
            taken = int(report["taken"])
            self.stats["batches"] += 1
            self.stats["batch_rows"] += len(live)
            self.stats["decode_steps"] += taken
            self.stats["row_steps"] += taken * len(live)
            self.batch_sizes[len(live)] += 1
        if self._run is run:
            if run.live() == 0:
                self._run = None
            elif ended.any():
                with mesh_context(self.model.mesh, self.model.rules):
                    run.state = end_rows(run.state, ended)

    def warmup(self, prompt_ids: np.ndarray | None = None, max_tokens: int | None = None) -> float:
        """Compile what steady state runs (`llava_jax.serve.warmup.warm_up`); returns the seconds it took."""
        from llava_jax.serve.warmup import warm_up

        return warm_up(self, prompt_ids, max_tokens)
