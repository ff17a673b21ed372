"""Per-step metrics: `metrics.jsonl` (the record the tests and tools read) and TensorBoard scalars.

The TensorBoard event file is written by `tensorboardX.SummaryWriter` into
`WORKDIR/tensorboard/`. Its events go through a queue to a writer thread, and
`SummaryWriter.flush()` flushes the file but does not wait for that queue; the
thread flushes on its own every `flush_secs`, so with `flush_secs=1` a logged
step is on disk within about a second (and all of them after `close()`).
"""

from __future__ import annotations

import json
import math
import os


class MetricsWriter:
    """Appends one JSON object per step to `metrics.jsonl` and scalars to a TensorBoard event file.

    Only the primary process writes (`enabled=False` elsewhere).
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        # Imported here: tensorboardX imports torch when it is installed, a cost only the writer pays.
        from tensorboardX import SummaryWriter

        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=1)

    def write(self, step: int, metrics: dict) -> None:
        """Record `metrics` (numbers; non-numbers go to JSON only) for `step`."""
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for tag, value in row.items():
            if tag != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(tag, float(value), global_step=int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(workdir: str) -> list[dict]:
    """All rows of `workdir/metrics.jsonl` (later rows for a step win, e.g. after a resume)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    by_step: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]
