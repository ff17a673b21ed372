"""Training checkpoints with orbax's `CheckpointManager`: state + data-iterator position, async, keep-last-K.

A checkpoint becomes visible only once all of it is written, so a run killed
mid-save never leaves a step that restores. How that is guaranteed depends on the
storage (`llava_jax.convert.storage`): on local disks and NFS orbax writes a
temporary directory and renames it; on `gs://` and FUSE-mounted buckets, which
cannot rename directories, it writes in place and commits with a marker file
(`commit_success.txt`) that step listing requires (`atomicity`, default `auto`).

Saves happen on multiples of `every_steps`, at a preemption sync point (JAX's
preemption notifier), and when forced (the end of training); not at the first
step (orbax's default would write one right away, a full-model write before any
progress on a large run).

The data position is stored twice: every process's own iterator state (grain's
per-process files, exact on the same topology) and process 0's as JSON (the
fallback when the number of processes changed).

When the newest checkpoint cannot be read (a truncated file, say), `restore` falls
back to the newest older one that can, with a warning naming the bad step and the
error, and deletes the unreadable newer steps so that training can write them again.
"""

from __future__ import annotations

import json
import logging

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import options as ocp_options

from llava_jax.convert import storage

log = logging.getLogger(__name__)

_ORBAX_MODES = {
    "rename": ocp_options.AtomicityMode.ATOMIC_RENAME,
    "commit_file": ocp_options.AtomicityMode.COMMIT_FILE,
}


class _LoaderState:
    """Adapts a pipeline `Loader` (dict state) to grain's per-process checkpoint handler (bytes state)."""

    def __init__(self, loader):
        self.loader = loader

    def get_state(self) -> bytes:
        return json.dumps(self.loader.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        self.loader.set_state(json.loads(state))

    def start_prefetch(self) -> None:
        pass


def _all_processes_agree(ok: bool) -> bool:
    """True when `ok` holds on every process (a collective with several processes)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


class Checkpointer:
    """Saves and restores {'state': train state tree, 'data': iterator positions} per step.

    Args:
      directory: a filesystem path or a `gs://` URL.
      every_steps: save on multiples of this step.
      keep: how many of the newest checkpoints to keep.
      async_save: write in the background (`wait` / `close` block until written).
      atomicity: `auto`, `rename` or `commit_file` (`llava_jax.convert.storage`).
    """

    def __init__(
        self, directory: str, *, every_steps: int, keep: int = 3, async_save: bool = True, atomicity: str = "auto"
    ):
        # Remote paths (gs://...) go to orbax untouched; local ones are made absolute.
        self.directory = str(storage.as_path(directory))
        self.atomicity = storage.resolve_atomicity(atomicity, self.directory)
        self.restored_step: int | None = None
        policy = ocp.checkpoint_managers.AnySavePolicy(
            [
                ocp.checkpoint_managers.FixedIntervalPolicy(max(1, every_steps)),
                ocp.checkpoint_managers.PreemptionCheckpointingPolicy(),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
            save_decision_policy=policy,
            atomicity_options=ocp_options.AtomicityOptions(mode=_ORBAX_MODES[self.atomicity]),
        )
        self._mgr = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "data_per_process")
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints kept, oldest first."""
        return sorted(self._mgr.all_steps())

    def due(self, step: int) -> bool:
        """Whether `save(step, ...)` would write a checkpoint (the step is on the interval, or preempted)."""
        return self._mgr.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        """Whether `step` is the preemption sync point every process agreed on (after a SIGTERM)."""
        return self._mgr.reached_preemption(step)

    def save(self, step: int, state_tree, loader, *, force: bool = False) -> bool:
        """Save when `step` is due (or `force`); returns whether a save started."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state_tree),
            data=ocp.args.JsonSave(loader.get_state()),
            data_per_process=grain.checkpoint.CheckpointSave(_LoaderState(loader)),
        )
        return self._mgr.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state, loader):
        """State tree shaped and sharded like `abstract_state`; `loader` is repositioned.

        Restores `step`, or, when it cannot be read, the newest older step that can (module
        docstring); `restored_step` says which. Raises the newest step's error when none can.
        """
        target = jax.tree.map(
            lambda x: ocp.utils.to_shape_dtype_struct(x) if hasattr(x, "shape") else x, abstract_state
        )
        candidates = [s for s in reversed(self.all_steps()) if s <= step] or [step]
        unreadable: list[int] = []
        first_error: Exception | None = None
        for candidate in candidates:
            error = None
            try:
                out = self._restore_step(candidate, target, loader)
            except Exception as e:  # tensorstore reports a truncated file as a bare Exception
                error = e
            if _all_processes_agree(error is None):
                break
            reason = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}" if error else "another process"
            log.warning(
                "checkpoint step %d in %s cannot be read (%s); trying the newest older step",
                candidate,
                self.directory,
                reason,
            )
            first_error = first_error or error or RuntimeError(reason)
            unreadable.append(candidate)
        else:
            raise first_error
        if unreadable:
            log.warning(
                "restored step %d of %s instead of the unreadable step(s) %s, which are deleted so that "
                "training writes them again",
                candidate,
                self.directory,
                unreadable,
            )
            for bad in unreadable:
                self._mgr.delete(bad)
        self.restored_step = candidate
        return out

    def _restore_step(self, step: int, target, loader):
        out = self._mgr.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
        )
        try:
            self._mgr.restore(
                step, args=ocp.args.Composite(data_per_process=grain.checkpoint.CheckpointRestore(_LoaderState(loader)))
            )
        except (ValueError, FileNotFoundError, KeyError) as e:
            # Another process count wrote it: continue from process 0's position (exact for padded batches).
            log.warning(
                "no data position for process %d of %d at step %d (%s); using process 0's",
                jax.process_index(),
                jax.process_count(),
                step,
                e,
            )
            loader.set_state(out.data)
        return out.state

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()
