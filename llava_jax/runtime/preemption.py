"""Preemption: on SIGTERM (or SIGUSR1) every process stops at one agreed step, checkpoints it, exits 76.

Schedulers announce the end of an allocation with a signal some seconds before
they kill it: SIGTERM on Cloud TPU maintenance, SLURM preemption and `scancel`,
and GKE pod eviction (30 s grace by default); SLURM's `--signal=USR1@T` sends
SIGUSR1 before the time limit. The training loop asks `PreemptionWatch.reached(step)`
after every step; when it says yes, the loop saves a checkpoint of that step
(forced, off the save interval), waits until it is on disk and raises
`Preempted`, a `SystemExit` with `PREEMPTED_EXIT_CODE` (76), which the
launchers turn into a requeue or restart. A restart resumes from that step and
continues bit for bit as if it had not stopped.

The stop step must be the same in every process (a process that stops early
leaves the others waiting in the next step's collectives forever):

- With several processes (`jax.distributed` up), JAX's preemption service owns
  SIGTERM: its notifier tells the coordination service, which takes the
  highest step any process has reached plus one as the sync point, and
  `jax.experimental.multihost_utils.reached_preemption_sync_point(step)` is true
  at that step in every process (it must be asked at every step, which the loop
  does; orbax's `CheckpointManager` asks the same service). A signal to any one
  process is enough. SIGUSR1 is handed on to that notifier as a SIGTERM.
- A lone process installs its own handlers for SIGTERM and SIGUSR1 and stops
  after the step that is running when the signal arrives.

A run whose data or `num_steps` ends before the agreed step finishes normally
(exit 0). Handlers are installed only from the main thread and put back when
the `with` block ends.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax

from llava_jax.runtime.exit_codes import PREEMPTED_EXIT_CODE

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """Raised after the preemption checkpoint of `step` is on disk; the process exits with 76."""

    def __init__(self, step: int, directory: str = ""):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step, self.directory = step, directory

    def __str__(self) -> str:
        where = f" in {self.directory}" if self.directory else ""
        return f"preempted: checkpoint of step {self.step} written{where}; exit status {PREEMPTED_EXIT_CODE}"


class PreemptionWatch:
    """Context manager: installs the signal handlers; `reached(step)` says when to stop.

    Args:
      signals: the signals that mean "stop soon" (default SIGTERM, SIGUSR1).
      multiprocess: use JAX's preemption service (default: when there are several processes).
    """

    def __init__(self, signals=SIGNALS, *, multiprocess: bool | None = None):
        self.signals = tuple(signals)
        self.multiprocess = jax.process_count() > 1 if multiprocess is None else multiprocess
        self.received: str | None = None  # the name of the signal this process got, if any
        self._previous: dict = {}
        self._warned = False

    def _on_signal(self, signum, frame) -> None:
        first = self.received is None
        self.received = signal.Signals(signum).name
        if self.multiprocess:
            # JAX's notifier watches SIGTERM only: hand the request on to it.
            if signum != signal.SIGTERM and first:
                signal.raise_signal(signal.SIGTERM)
        elif first:
            log.warning("%s received: stopping after the current step with a checkpoint", self.received)

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: no preemption signal handlers installed")
            return self
        for sig in self.signals:
            if self.multiprocess and sig == signal.SIGTERM:
                continue  # JAX's preemption notifier has it (installed by jax.distributed.initialize)
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def requested(self) -> bool:
        """Whether this process has been asked to stop (a lone process stops at its next `reached`)."""
        return self.received is not None

    def reached(self, step: int) -> bool:
        """Whether `step` (just completed) is the step every process stops at. Ask at every step."""
        if self.multiprocess:
            from jax.experimental import multihost_utils

            try:
                return bool(multihost_utils.reached_preemption_sync_point(int(step)))
            except RuntimeError as e:  # jax_enable_preemption_service turned off: no agreed stop
                if not self._warned:
                    log.warning("no preemption checkpoints: %s", e)
                    self._warned = True
                return False
        return self.received is not None
