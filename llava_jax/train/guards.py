"""Guards that stop a training run instead of letting it finish with a wrong model.

`DivergenceGuard` stops on a non-finite loss or gradient norm, and on a loss
spike: the loss above `spike_factor` x its running median (and more than
`spike_min_delta` above it) for `spike_steps` steps in a row. The running
median is over the last `spike_window` normal steps; spike steps stay out of
it, so a divergence cannot raise its own baseline, and steps without
supervised tokens (loss 0 by definition) are ignored.

It must see every step's loss, although the loop fetches metrics from the
devices only every `log_every` steps (fetching every step would wait for each
step before dispatching the next). `record` therefore keeps a reference to
each step's loss, gradient norm and token count *on the device* (no transfer,
no wait); `check` fetches all of them in one go and judges them in step
order. The loop calls `check` at every fetch point, and checkpoint steps are
always fetch points, with `check` before the save: no checkpoint is written
after a bad step without the guard having seen that step.

"Last good checkpoint" means one saved before the first warning sign (the
first step of the spike run, or the non-finite step): the loss of step `s` is
computed on the weights saved as step `s - 1`, so when step `s` is the first
bad one the last good checkpoint is the newest one at step `s - 2` or earlier.

The running median starts empty after a resume (it is not checkpointed), so
the first step after a resume is never judged a spike.

`SkipGuard` stops when the data is mostly unusable: when the fraction of
skipped samples passes `max_fraction` once `check_after` samples were read
(and at the end of the run, however few), or when no sample survived at all,
naming the top reasons and example ids. With several processes the counts are
summed over processes first, so every process takes the same decision.
"""

from __future__ import annotations

import collections
import math
import statistics
from collections.abc import Sequence

import jax
import numpy as np


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm stopped being finite, or the loss spiked for several steps."""


class TooManySkipped(ValueError):
    """Too many samples of the training data could not be used (wrong paths, corrupt files)."""


def last_good(first_bad: int, sign: str, checkpoints: Sequence[int], directory: str) -> str:
    """The sentence naming the newest checkpoint saved before the first warning sign `sign` at step `first_bad`."""
    good = [c for c in checkpoints if c <= first_bad - 2]
    if good:
        return (
            f"The last good checkpoint is step {max(good)} in {directory}: saved before the first warning sign "
            f"({sign} at step {first_bad}, computed on the weights saved as step {first_bad - 1})."
        )
    return (
        f"No kept checkpoint precedes the first warning sign ({sign} at step {first_bad}): restart from the "
        f"initial weights (with a lower optim.lr?)."
    )


class DivergenceGuard:
    """Non-finite and loss-spike stops over every step's loss (module docstring).

    Args:
      spike_factor: a loss above this multiple of its running median is a spike (0: no spike guard).
      spike_steps: consecutive spikes that stop the run.
      spike_window: normal steps the running median is taken over.
      spike_min_delta: a spike is also at least this far above the median (losses near 0 vary by large factors).
    """

    def __init__(
        self,
        *,
        spike_factor: float = 10.0,
        spike_steps: int = 3,
        spike_window: int = 100,
        spike_min_delta: float = 1.0,
    ):
        self.spike_factor, self.spike_steps, self.spike_min_delta = spike_factor, spike_steps, spike_min_delta
        self._history: collections.deque = collections.deque(maxlen=spike_window)
        self._pending: list[tuple[int, dict]] = []
        self._run_start: int | None = None  # first step of the current run of spikes
        self._run_loss = 0.0
        self._run_length = 0

    @classmethod
    def from_config(cls, cfg) -> DivergenceGuard:
        """The guard of an experiment config's `guard` fields (defaults for absent ones)."""
        g = cfg.get("guard") or {}
        return cls(
            spike_factor=float(g.get("spike_factor", 10.0)),
            spike_steps=int(g.get("spike_steps", 3)),
            spike_window=int(g.get("spike_window", 100)),
            spike_min_delta=float(g.get("spike_min_delta", 1.0)),
        )

    def record(self, step: int, metrics: dict) -> None:
        """Keep step `step`'s `train/loss`, `train/grad_norm`, `train/tokens` (device arrays: nothing waits)."""
        keys = ("train/loss", "train/grad_norm", "train/tokens")
        self._pending.append((step, {k: metrics[k] for k in keys if k in metrics}))

    def check(self, checkpoints: Sequence[int] = (), directory: str = "") -> None:
        """Judge every recorded step in order; `TrainingDiverged` at the first that stops the run.

        `checkpoints` (the steps kept in `directory`) serve the message's last good checkpoint.
        """
        pending, self._pending = self._pending, []
        for step, values in zip([s for s, _ in pending], jax.device_get([m for _, m in pending])):
            self.observe(
                step,
                float(values["train/loss"]),
                float(values.get("train/grad_norm", 0.0)),
                int(values.get("train/tokens", 1)),
                checkpoints,
                directory,
            )

    def observe(
        self, step: int, loss: float, grad_norm: float, tokens: int = 1, checkpoints=(), directory: str = ""
    ) -> None:
        """Judge one step (host values); raises `TrainingDiverged` when it stops the run."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            if self._run_start is not None:
                first, sign = self._run_start, f"loss spike to {self._run_loss:.4g}"
            else:
                first, sign = step, "non-finite loss or gradient norm"
            raise TrainingDiverged(
                f"step {step}: non-finite loss ({loss}) or gradient norm ({grad_norm}); stopping. "
                + last_good(first, sign, checkpoints, directory)
            )
        if tokens == 0:
            return
        median = statistics.median_low(self._history) if self._history else None
        if (
            self.spike_factor
            and median is not None
            and loss > self.spike_factor * median
            and loss - median > self.spike_min_delta
        ):
            if self._run_start is None:
                self._run_start, self._run_loss = step, loss
            self._run_length += 1
            if self._run_length >= self.spike_steps:
                first = self._run_start
                raise TrainingDiverged(
                    f"step {step}: loss {loss:.4g} above {self.spike_factor:g} x its running median {median:.4g} "
                    f"for {self._run_length} steps in a row (guard.spike_factor, guard.spike_steps); stopping. "
                    + last_good(first, f"loss spike to {self._run_loss:.4g}", checkpoints, directory)
                )
            return
        self._run_start, self._run_length = None, 0
        self._history.append(loss)


class SkipGuard:
    """Stops a run whose data is mostly skipped (module docstring).

    Args:
      max_fraction: the largest tolerated fraction of skipped samples (1: never stop for the fraction).
      check_after: samples (used + skipped) to read before the fraction is judged mid-run.
    """

    # Consecutive skips from the start that mean "nothing will survive" (at a 50% skip rate, 32 in a
    # row happen once in 4 billion runs): stops a wrong image root early whatever `check_after` is.
    NONE_SURVIVED_AFTER = 32

    def __init__(self, *, max_fraction: float = 0.05, check_after: int = 1000):
        self.max_fraction, self.check_after = max_fraction, check_after

    @classmethod
    def from_config(cls, cfg) -> SkipGuard:
        d = cfg.data
        return cls(
            max_fraction=float(d.get("max_skip_fraction", 0.05)), check_after=int(d.get("skip_check_after", 1000))
        )

    def check(self, loader, *, final: bool = False, num_examples: int | None = None) -> None:
        """`TooManySkipped` when `loader`'s counts (`skipped`, `samples`, `recent_skips`) are past the limits.

        `final`: the end of the run, where the fraction is judged however few samples were read
        and a run that used no sample at all is refused.
        """
        skipped = int(sum(loader.skipped.values()))
        samples = int(loader.samples)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            totals = np.asarray(multihost_utils.process_allgather(np.asarray([skipped, samples], np.int64)))
            skipped, samples = (int(x) for x in totals.reshape(-1, 2).sum(0))
        seen = skipped + samples
        if final and seen == 0:
            size = f" of {num_examples} examples" if num_examples is not None else ""
            raise TooManySkipped(
                f"the data{size} yielded no batch: nothing was trained (fewer examples than one batch_size, "
                f"with data.num_epochs=1?)"
            )
        if seen == 0:
            return
        fraction = skipped / seen
        if samples == 0 and (final or seen >= min(self.check_after, self.NONE_SURVIVED_AFTER)):
            raise TooManySkipped(f"no sample survived: all {seen} read were skipped; {self._reasons(loader)}")
        if (final or seen >= self.check_after) and fraction > self.max_fraction:
            raise TooManySkipped(
                f"{skipped} of {seen} samples skipped ({fraction:.1%}, above data.max_skip_fraction="
                f"{self.max_fraction:g}); {self._reasons(loader)}"
            )

    @staticmethod
    def _reasons(loader) -> str:
        top = ", ".join(f"{reason} {count}" for reason, count in loader.skipped.most_common(3))
        ids = ", ".join(f"{i} ({r})" for i, r in list(loader.recent_skips)[:3])
        return (
            f"top reasons: {top or 'none on this process'}; e.g. {ids or '-'}. Check data.json and "
            f"data.image_root, or raise data.max_skip_fraction to accept it"
        )
