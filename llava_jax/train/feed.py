"""The training loop's batches: read ahead of the running step, with every process agreeing on the end of the data.

Each process reads its own slice of the data, and with packing the slices
yield different numbers of batches (rows depend on the lengths packed
together: e.g. 34 and 33, or 17, 16, 16 and 15). A process that stopped at the
end of its own slice would leave the others waiting forever in the next
step's collectives. So every batch read comes with a flag, "this process has
it", and the step runs only when every process has its batch: the flags are
reduced with a minimum over all devices (a tiny jitted all-reduce of one int32
per device) and the first batch any process lacks ends the run for all of them
at the same step.

The all-reduce costs no synchronisation of its own: batches are read
`lookahead` (2) steps ahead, and a batch's flag is dispatched when the batch is
read, so when the loop needs it (before dispatching that batch's step) it was
queued on the devices behind steps that have finished or are running, and the
next step is already queued behind them. A single process needs no agreement.

`get_state()` is the position before the first batch read ahead and not yet
taken, so a checkpoint resumes exactly at the next step's batch.
"""

from __future__ import annotations

import collections
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class _AllMin:
    """min over processes of one int per process, dispatched asynchronously (one int32 per device)."""

    def __init__(self):
        mesh = Mesh(np.asarray(jax.devices()), ("all",))
        self.sharding = NamedSharding(mesh, PartitionSpec("all"))
        self.shape = (jax.device_count(),)
        self.fn = jax.jit(jnp.min, out_shardings=NamedSharding(mesh, PartitionSpec()))

    def dispatch(self, value: int) -> jax.Array:
        local = np.full((jax.local_device_count(),), value, np.int32)
        return self.fn(jax.make_array_from_process_local_data(self.sharding, local, self.shape))


class Feed:
    """Batches for the loop: `next()` returns the next batch every process has, or None at the agreed end.

    Args:
      loader: a pipeline `Loader` (iterator of global batches with `get_state`/`set_state`).
      lookahead: batches read ahead of the step that uses them.
      agree: reduce the per-batch flags across processes (default: when there are several).

    `data_wait_s` accumulates the seconds spent reading batches (host time; it
    overlaps the steps running on the devices). `skipped` and `samples` count
    the batches `next` returned, as the checkpointed position does.
    """

    def __init__(self, loader, *, lookahead: int = 2, agree: bool | None = None):
        if lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {lookahead}")
        self.loader = loader
        self.lookahead = lookahead
        self.agree = jax.process_count() > 1 if agree is None else agree
        self._all_min = _AllMin() if self.agree else None
        self._queue: collections.deque = collections.deque()  # [state before, batch or None, flag]
        self._local_end = False
        self.data_wait_s = 0.0
        self.ended = False  # the agreed end was reached

    # ---------------------------------------------------------------- reading
    def fill(self, limit: int) -> None:
        """Read until `lookahead` batches are queued, at most `limit` queued in all (the steps left).

        Every process must call this with the same `limit` at the same points (it decides how many
        flags are reduced); the loop does.
        """
        while len(self._queue) < min(self.lookahead, limit):
            t0 = time.perf_counter()
            state = self.loader.get_state()
            batch = None
            if not self._local_end:
                try:
                    batch = next(self.loader)
                except StopIteration:
                    self._local_end = True
            has = batch is not None
            flag = self._all_min.dispatch(int(has)) if self._all_min is not None else has
            self._queue.append([state, batch, flag])
            self.data_wait_s += time.perf_counter() - t0

    def next(self) -> dict | None:
        """The next batch (None when some process has none: the run ends at this step everywhere)."""
        if self.ended:
            return None
        if not self._queue:
            self.fill(1)
        entry = self._queue[0]
        flag = entry[2]
        everyone = bool(int(np.asarray(flag.addressable_data(0)))) if isinstance(flag, jax.Array) else bool(flag)
        if not everyone:
            self.ended = True  # keep the entry: the position stays before the batch no step used
            return None
        self._queue.popleft()
        return entry[1]

    def pending(self) -> int:
        """Batches read ahead and not yet taken."""
        return len(self._queue)

    # ---------------------------------------------------------------- checkpointing
    def get_state(self) -> dict:
        """Pipeline position before the first batch not yet taken by `next` (JSON-serialisable)."""
        return self._queue[0][0] if self._queue else self.loader.get_state()

    def set_state(self, state: dict) -> None:
        self._queue.clear()
        self._local_end = self.ended = False
        self.loader.set_state(state)

    # ---------------------------------------------------------------- skip accounting (the skip guard reads these)
    @property
    def skipped(self) -> collections.Counter:
        """Samples skipped, by reason, in the batches `next` returned (not those read ahead)."""
        return collections.Counter(self.get_state().get("skipped", {}))

    @property
    def samples(self) -> int:
        """Samples in the batches `next` returned."""
        return int(self.get_state().get("samples", 0))

    @property
    def recent_skips(self):
        """The loader's latest (sample id, reason) pairs, read-ahead batches included."""
        return self.loader.recent_skips

    def close(self) -> None:
        self._queue.clear()
        self.loader.close()
