"""Per-step metrics: `metrics.jsonl` (the record the tests and tools read) and TensorBoard scalars.

Each step appears once. A run that restarts from the checkpoint of step `r`
redoes the steps after `r` that the interrupted run had already logged:
`MetricsWriter(..., resume_step=r)` first drops those rows from
`metrics.jsonl` (rewritten through a temporary file and a rename) and tells
TensorBoard to purge its events after `r` (`purge_step`). The rows dropped
measure what the restart cost: `restart_info()` gives the steps redone and the
wall time the interrupted run spent on them (from the rows' `time/wall`), which
the loop records in its first row after the resume (goodput accounting, see
`llava_jax/train/loop.py`).

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
import time


class MetricsWriter:
    """Appends one JSON object per step to `metrics.jsonl` and scalars to a TensorBoard event file.

    Only the primary process writes (`enabled=False` elsewhere). `resume_step`: the step this run
    starts from (0 for a fresh start); rows of later steps left by an interrupted run are dropped.
    """

    def __init__(self, workdir: str, enabled: bool = True, *, resume_step: int | None = None):
        self.enabled = enabled
        self._restart: dict | None = None
        if not enabled:
            return
        # Imported here: tensorboardX imports torch when it is installed, a cost only the writer pays.
        from tensorboardX import SummaryWriter

        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "metrics.jsonl")
        purge = None
        if resume_step is not None and os.path.exists(path):
            self._restart, dropped = _truncate(path, int(resume_step))
            purge = int(resume_step) + 1 if dropped else None
        self._jsonl = open(path, "a")
        # The event file is named by the second it was opened in: a run resumed within the same second
        # would overwrite its predecessor's file without a finer suffix (which also keeps them in order).
        self._tb = SummaryWriter(
            os.path.join(workdir, "tensorboard"), flush_secs=1, purge_step=purge, filename_suffix=f".{time.time_ns()}"
        )

    def restart_info(self) -> dict | None:
        """After a resume over earlier rows: `redone_steps` (logged rows after the resume step, dropped),
        `lost_s` (wall seconds the interrupted run spent past the resume step, from `time/wall`) and
        `previous_wall` (the interrupted run's last row's `time/wall`, or None). None on a fresh workdir."""
        return self._restart

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


def _read_rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate(path: str, resume_step: int) -> tuple[dict, int]:
    """Drop the rows of steps after `resume_step` from `path`; returns (restart info, rows dropped)."""
    try:
        rows = _read_rows(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        # A row cut off by a kill mid-write: keep the complete lines.
        rows = []
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    kept = [r for r in rows if r.get("step", 0) <= resume_step]
    dropped = [r for r in rows if r.get("step", 0) > resume_step]
    walls = [r["time/wall"] for r in rows if isinstance(r.get("time/wall"), (int, float))]
    kept_walls = [r["time/wall"] for r in kept if isinstance(r.get("time/wall"), (int, float))]
    dropped_walls = [r["time/wall"] for r in dropped if isinstance(r.get("time/wall"), (int, float))]
    lost = 0.0
    if dropped_walls:
        # From the resume step's row (or the run's first row) to the last row redone.
        since = max(kept_walls) if kept_walls else min(dropped_walls)
        lost = max(0.0, max(dropped_walls) - since)
    info = {
        "redone_steps": len({r["step"] for r in dropped}),
        "lost_s": lost,
        "previous_wall": max(walls) if walls else None,
    }
    if dropped or len(kept) != len(rows):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, path)
    return info, len(dropped)


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
