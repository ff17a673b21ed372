"""Training checkpoints with orbax's `CheckpointManager`: state + data-iterator position, async, keep-last-K.

Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save never leaves a checkpoint that restores.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores {'state': train state tree, 'data': JSON iterator state} per step."""

    def __init__(self, directory: str, *, every_steps: int, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(1, every_steps), max_to_keep=keep,
            enable_async_checkpointing=async_save, create=True,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._mgr.latest_step()

    def save(self, step: int, state_tree, data_state: dict, *, force: bool = False) -> bool:
        """Save when `step` is on the interval (or `force`); returns whether a save started."""
        return self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state_tree),
                                                             data=ocp.args.JsonSave(data_state)), force=force)

    def restore(self, step: int, abstract_state) -> tuple:
        """(state tree shaped and sharded like `abstract_state`, data iterator state) at `step`."""
        target = jax.tree.map(lambda x: ocp.utils.to_shape_dtype_struct(x) if hasattr(x, "shape") else x,
                              abstract_state)
        out = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                               data=ocp.args.JsonRestore()))
        return out.state, out.data

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()
