"""Training checkpoints with orbax's `CheckpointManager`: state + data-iterator position, async, keep-last-K.

Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save never leaves a checkpoint that restores.
The data position is stored twice: every process's own iterator state (grain's
per-process files, exact on the same topology) and process 0's as JSON (the
fallback when the number of processes changed).
"""

from __future__ import annotations

import json
import logging
import os

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


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


class Checkpointer:
    """Saves and restores {'state': train state tree, 'data': iterator positions} per step."""

    def __init__(self, directory: str, *, every_steps: int, keep: int = 3, async_save: bool = True):
        # Remote paths (gs://...) go to orbax untouched; local ones are made absolute.
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(1, every_steps),
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
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
        """Whether `save(step, ...)` would write a checkpoint (the step is on the interval)."""
        return self._mgr.should_save(step)

    def save(self, step: int, state_tree, loader, *, force: bool = False) -> bool:
        """Save when `step` is on the interval (or `force`); returns whether a save started."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state_tree),
            data=ocp.args.JsonSave(loader.get_state()),
            data_per_process=grain.checkpoint.CheckpointSave(_LoaderState(loader)),
        )
        return self._mgr.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state, loader):
        """State tree shaped and sharded like `abstract_state` at `step`; `loader` is repositioned."""
        target = jax.tree.map(
            lambda x: ocp.utils.to_shape_dtype_struct(x) if hasattr(x, "shape") else x, abstract_state
        )
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
