"""Where a run's wall time goes (goodput fields of `metrics.jsonl`) and the profiler window.

Every logged row carries, besides the step's metrics:

- `train/step_time`: wall seconds per step since the previous row, compilation
  and checkpoint saving excluded (the figure tokens/s and MFU use);
- `time/data_wait`: host seconds per step spent reading batches in that interval
  (the loop reads ahead while the devices run, so this is an upper bound of
  the time the devices waited for data);
- cumulative seconds of this process's run: `time/elapsed` (since `run()`
  started), `time/startup` (until the first step was dispatched: model
  loading, restore, first compilation), `time/compile`, `time/checkpoint`
  (blocking time of checkpoint saves), `time/train` (the steps), and
  `time/goodput` = `time/train / time/elapsed`;
- `time/wall`: the row's Unix time.

The first row after a resume adds what the restart cost: `restart/redone_steps`
and `restart/lost_s` (the interrupted run's logged steps after the checkpoint
and the wall seconds it spent on them, now done again) and `restart/downtime_s`
(from the interrupted run's last row to this run's start: the time to notice,
requeue and relaunch; add `time/startup` for the time until training resumed).

`ProfileWindow`: `--config.profile.steps=a:b` records a `jax.profiler` trace of
steps a to b (1-based, inclusive) into `WORKDIR/profile/` (one
`profile/process_i/` per process when there are several); open it with
TensorBoard's profile plugin, XProf or Perfetto.
"""

from __future__ import annotations

import logging
import os
import time

import jax

from llava_jax.config import ConfigError

log = logging.getLogger(__name__)


class Goodput:
    """Cumulative time accounting of one `run()`; `row()` gives the fields above."""

    def __init__(self, restart: dict | None = None):
        self.started_wall = time.time()
        self._started = time.perf_counter()
        self.startup_s: float | None = None
        self.compile_s = 0.0
        self.checkpoint_s = 0.0
        self.train_s = 0.0
        self._restart = restart

    def first_step(self) -> None:
        """Called once, when the first step is about to be dispatched."""
        if self.startup_s is None:
            self.startup_s = time.perf_counter() - self._started

    def row(self, *, data_wait_s: float, interval_steps: int, interval_data_s: float) -> dict:
        elapsed = time.perf_counter() - self._started
        out = {
            "time/wall": time.time(),
            "time/elapsed": elapsed,
            "time/startup": self.startup_s if self.startup_s is not None else elapsed,
            "time/compile": self.compile_s,
            "time/checkpoint": self.checkpoint_s,
            "time/train": self.train_s,
            "time/goodput": self.train_s / elapsed if elapsed > 0 else 0.0,
            "time/data_wait": interval_data_s / max(1, interval_steps),
            "time/data_wait_total": data_wait_s,
        }
        if self._restart is not None:
            previous = self._restart.get("previous_wall")
            out["restart/redone_steps"] = int(self._restart["redone_steps"])
            out["restart/lost_s"] = float(self._restart["lost_s"])
            out["restart/downtime_s"] = max(0.0, self.started_wall - previous) if previous is not None else None
            self._restart = None
        return out


def parse_steps(spec: str) -> tuple[int, int] | None:
    """`"a:b"` -> (a, b) with 1 <= a <= b; `""` -> None. A bad value is a `ConfigError` naming the key."""
    spec = (spec or "").strip()
    if not spec:
        return None
    first, sep, last = spec.partition(":")
    try:
        a, b = int(first), int(last if sep else first)
    except ValueError:
        raise ConfigError(f"profile.steps must look like 'a:b' (first and last step to trace), got {spec!r}") from None
    if not 1 <= a <= b:
        raise ConfigError(f"profile.steps {spec!r}: need 1 <= first <= last")
    return a, b


class ProfileWindow:
    """Starts a `jax.profiler` trace before step `a` and stops it once step `b` has finished."""

    def __init__(self, steps: tuple[int, int] | None, directory: str):
        self.steps, self.directory = steps, directory
        self.active = False
        self.done = steps is None

    @classmethod
    def from_config(cls, cfg, workdir: str) -> ProfileWindow:
        profile = cfg.get("profile")
        steps = parse_steps(profile.get("steps", "") if profile is not None else "")
        directory = os.path.join(workdir, "profile")
        if jax.process_count() > 1:
            directory = os.path.join(directory, f"process_{jax.process_index()}")
        return cls(steps, directory)

    def before(self, step: int) -> None:
        """`step` (1-based) is about to be dispatched."""
        if self.done or self.active or not self.steps[0] <= step <= self.steps[1]:
            return
        os.makedirs(self.directory, exist_ok=True)
        jax.profiler.start_trace(self.directory)
        self.active = True

    def after(self, step: int, outputs) -> float:
        """`step` was dispatched with `outputs`; stops (after they are computed) at the window's last step.

        Returns the seconds spent writing the trace out (not step time).
        """
        if not (self.active and step >= self.steps[1]):
            return 0.0
        jax.block_until_ready(outputs)
        t0 = time.perf_counter()
        self.close()
        return time.perf_counter() - t0

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            self.done = True
            log.info("profile of steps %d-%d written to %s", *self.steps, self.directory)
