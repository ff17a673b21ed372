"""The stall watchdog: a process whose training makes no progress in time dumps its stacks and exits 77.

A multi-host run that stops making progress (a collective waiting for a peer
that never arrives, a data read blocked on a dead mount, a deadlock) otherwise
hangs silently until the allocation runs out. `Watchdog` is a daemon thread
that the training loop tells what it is doing (`phase("waiting for batch")`)
and when a step completes (`step_done(step)`). When no step completes within
`timeout_s` it writes to stderr (the process's log under the launchers)::

    llava_jax watchdog: process 1 of 2: no training step finished in 900 s ...
    last step 120 finished 901.2 s ago; phase 'waiting for batch' since 899.8 s

then every thread's Python stack (`faulthandler.dump_traceback`), and ends the
process with `STALLED_EXIT_CODE` (77) through `os._exit`: the stalled main
thread may be inside a collective that never returns, and a normal exit would
wait on JAX's shutdown barrier. Every process runs its own watchdog, so in a
multi-host stall every process (the stalled one and the ones waiting for it in
a collective) dumps and exits about `timeout_s` after its last step; the
launchers treat 77 as restartable and the run resumes from its last checkpoint.

Allowances: until the first step completes the limit is `startup_s` (model
loading, checkpoint restore, the first compilation); a phase that may take
long on its own (a compilation for a new batch shape, a checkpoint save, the
final export) is given `phase(name, allow_s=...)`, which extends the deadline
to at least that long from the phase's start. `timeout_s <= 0` turns the
watchdog off.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from collections.abc import Callable

from llava_jax.runtime.exit_codes import STALLED_EXIT_CODE


class Watchdog:
    """A daemon thread that dumps all stacks and exits `STALLED_EXIT_CODE` when training stalls.

    Args:
      timeout_s: most seconds between two completed steps (<= 0: off).
      startup_s: the limit until the first step completes (default `timeout_s`).
      who: how the process names itself in the message, e.g. "process 1 of 2".
      poll_s: how often the thread looks at the clock.
      stream: where the message and stacks go (needs a file descriptor for faulthandler).
      exit: called with the exit status after the dump (tests pass their own; default `os._exit`).
    """

    def __init__(
        self,
        timeout_s: float,
        *,
        startup_s: float | None = None,
        who: str = "",
        poll_s: float | None = None,
        stream=None,
        exit: Callable[[int], None] = os._exit,
    ):
        self.timeout_s = float(timeout_s)
        self.startup_s = float(startup_s if startup_s is not None else timeout_s)
        self.enabled = self.timeout_s > 0
        self.who = who
        self.poll_s = poll_s if poll_s is not None else min(5.0, max(0.05, self.timeout_s / 20))
        self.stream = stream
        self._exit = exit
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        now = time.monotonic()
        self.last_step: int | None = None
        self._last_step_at = now
        self._phase, self._phase_at = "starting", now
        self._deadline = now + self.startup_s
        self.fired = False

    # ------------------------------------------------------------------ the loop's side
    def phase(self, name: str, *, allow_s: float | None = None) -> None:
        """Record what the process is doing now; `allow_s` gives this phase at least that long."""
        now = time.monotonic()
        with self._lock:
            self._phase, self._phase_at = name, now
            if allow_s is not None:
                self._deadline = max(self._deadline, now + allow_s)

    def step_done(self, step: int) -> None:
        """A training step completed (was dispatched and its predecessor finished): restart the clock."""
        now = time.monotonic()
        with self._lock:
            self.last_step, self._last_step_at = int(step), now
            self._deadline = now + self.timeout_s

    def start(self) -> Watchdog:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="llava_jax-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.poll_s * 4 + 1)
        self._thread = None

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ the thread
    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                overdue = time.monotonic() > self._deadline
            if overdue and not self._stop.is_set():
                self.fire()
                return

    def report(self) -> str:
        """The one-paragraph diagnosis written before the stacks."""
        now = time.monotonic()
        with self._lock:
            limit = self.timeout_s if self.last_step is not None else self.startup_s
            if self.last_step is None:
                last = f"no step finished yet ({now - self._last_step_at:.1f} s since start-up)"
            else:
                last = f"last step {self.last_step} finished {now - self._last_step_at:.1f} s ago"
            phase = f"phase {self._phase!r} since {now - self._phase_at:.1f} s"
        who = f"{self.who}: " if self.who else ""
        return (
            f"llava_jax watchdog: {who}no training step finished in time (limit {limit:.0f} s); "
            f"{last}; {phase}.\n"
            f"llava_jax watchdog: dumping every thread's stack and exiting with status {STALLED_EXIT_CODE} "
            "(stalled; restart every process to resume from the last checkpoint).\n"
        )

    def fire(self) -> None:
        """Write the diagnosis and all thread stacks, then exit with `STALLED_EXIT_CODE`."""
        self.fired = True
        stream = self.stream or sys.stderr
        try:
            stream.write("\n" + self.report())
            stream.flush()
            faulthandler.dump_traceback(file=stream, all_threads=True)
            stream.flush()
            sys.stdout.flush()
        except (OSError, ValueError):  # a closed or fd-less stream: the exit status still says it
            pass
        self._exit(STALLED_EXIT_CODE)
