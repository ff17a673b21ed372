"""Training checkpoints: commit-file atomicity without directory renames, half-written and unreadable
steps, no save at the first step, and `gs://` directories handed to orbax untouched."""

import glob
import logging
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from llava_jax.train import checkpoint as checkpoint_module
from llava_jax.train.checkpoint import Checkpointer
from tests.convert.storage_guards import forbid_directory_renames, forbid_os_calls_on_urls


class Loader:
    """The part of the pipeline's loader a checkpoint touches: a JSON-able position."""

    def __init__(self, position: int = -1):
        self.position = position

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = state["position"]


def _tree(step: int) -> dict:
    return {"step": jnp.asarray(step, jnp.int32), "w": jnp.arange(16, dtype=jnp.float32) + step}


def _save(directory, steps, **kwargs) -> None:
    ckpt = Checkpointer(str(directory), every_steps=4, **kwargs)
    for step in steps:
        assert ckpt.save(step, _tree(step), Loader(step)), f"step {step} was not saved"
    ckpt.close()


def _restore(directory, step, **kwargs):
    ckpt = Checkpointer(str(directory), every_steps=4, **kwargs)
    loader = Loader()
    out = ckpt.restore(step, _tree(0), loader)
    return ckpt, out, loader


def test_no_save_at_the_first_step(tmp_path):
    """orbax saves the first step it sees by default; here only multiples of every_steps (and forced saves)."""
    ckpt = Checkpointer(str(tmp_path / "ckpt"), every_steps=4, async_save=False)
    assert not ckpt.due(1) and not ckpt.save(1, _tree(1), Loader(1))
    assert ckpt.due(4) and not ckpt.due(6)
    assert ckpt.save(6, _tree(6), Loader(6), force=True)
    ckpt.close()
    assert Checkpointer(str(tmp_path / "ckpt"), every_steps=4).all_steps() == [6]


@pytest.mark.parametrize("atomicity", ["commit_file", "rename"])
def test_commit_file_saves_and_restores_without_renaming_a_directory(tmp_path, monkeypatch, atomicity):
    """The renames orbax does by default (`rename`) are what a flat-namespace bucket cannot do."""
    directory = tmp_path / "ckpt"
    attempts = forbid_directory_renames(monkeypatch, directory)
    if atomicity == "rename":  # the guard sees orbax's renames: without commit files saving fails
        with pytest.raises(Exception, match="directory rename forbidden"):  # noqa: B017 (orbax may wrap it)
            _save(directory, [4], atomicity=atomicity)
        assert attempts and attempts[0][0].startswith(str(directory))
        return
    # Async (the renames would happen in orbax's thread); keep 2: step 4 is deleted on the way.
    _save(directory, [4, 8, 12], atomicity=atomicity, keep=2)
    assert attempts == []
    assert os.path.exists(directory / "12" / "commit_success.txt") and not os.path.exists(directory / "4")
    ckpt, out, loader = _restore(directory, 12, atomicity=atomicity)
    assert ckpt.all_steps() == [8, 12] and ckpt.restored_step == 12
    np.testing.assert_array_equal(out["w"], np.arange(16) + 12)
    assert loader.position == 12
    ckpt.close()


def test_a_step_without_its_commit_file_is_never_restored(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    forbid_directory_renames(monkeypatch, directory)
    _save(directory, [4, 8], atomicity="commit_file")
    # A save interrupted before its commit: all of step 12's files but no commit_success.txt.
    shutil.copytree(directory / "8", directory / "12")
    for marker in glob.glob(f"{directory}/12/**/commit_success.txt", recursive=True):
        os.remove(marker)
    ckpt = Checkpointer(str(directory), every_steps=4, atomicity="commit_file", async_save=False)
    assert ckpt.latest_step() == 8 and ckpt.all_steps() == [4, 8]
    # Training reaches step 12 again and writes it over the remains.
    assert ckpt.save(12, _tree(12), Loader(12))
    loader = Loader()
    out = ckpt.restore(12, _tree(0), loader)
    np.testing.assert_array_equal(out["w"], np.arange(16) + 12)
    assert loader.position == 12
    ckpt.close()


@pytest.mark.parametrize("broken", ["state", "data"])
def test_an_unreadable_newest_step_falls_back_to_the_newest_readable_one(tmp_path, caplog, broken):
    directory = tmp_path / "ckpt"
    _save(directory, [4, 8, 12])
    if broken == "state":  # a truncated array file
        victim = max(glob.glob(f"{directory}/12/state/**/d/*", recursive=True), key=os.path.getsize)
        with open(victim, "r+b") as f:
            f.truncate(os.path.getsize(victim) // 2)
    else:  # process 0's data position, cut mid-JSON
        victim = f"{directory}/12/data/metadata"
        with open(victim, "r+b") as f:
            f.truncate(3)
    with caplog.at_level(logging.WARNING, logger=checkpoint_module.__name__):
        ckpt, out, loader = _restore(directory, 12)
    assert ckpt.restored_step == 8
    np.testing.assert_array_equal(out["w"], np.arange(16) + 8)
    assert loader.position == 8
    text = caplog.text
    assert "step 12" in text and "cannot be read" in text and "restored step 8" in text
    assert ("OUT_OF_RANGE" in text or "byte range" in text.lower()) if broken == "state" else "JSON" in text
    # The bad step is gone, so that training can write step 12 again.
    assert ckpt.all_steps() == [4, 8]
    assert ckpt.save(12, _tree(12), Loader(12))
    ckpt.close()


def test_no_step_readable_raises_the_newest_error(tmp_path):
    directory = tmp_path / "ckpt"
    _save(directory, [4])
    with open(f"{directory}/4/data/metadata", "w") as f:
        f.write("{")
    with pytest.raises(Exception, match="JSON|Expecting"):
        _restore(directory, 4)
    assert Checkpointer(str(directory), every_steps=4).all_steps() == [4]  # nothing deleted


def test_a_gs_directory_goes_to_orbax_untouched(monkeypatch):
    """No os.path on a URL (it would become ./gs:/bucket/...); commit files on object storage."""
    seen = {}

    class Manager:
        def __init__(self, directory, options, item_names):
            seen.update(directory=directory, mode=options.atomicity_options.mode)

    monkeypatch.setattr(checkpoint_module.ocp, "CheckpointManager", Manager)
    calls = forbid_os_calls_on_urls(monkeypatch)
    ckpt = Checkpointer("gs://bucket/run/checkpoints", every_steps=4)
    assert calls == []
    assert seen["directory"] == ckpt.directory == "gs://bucket/run/checkpoints"
    assert seen["mode"].value == "commit_file" and ckpt.atomicity == "commit_file"
    with pytest.raises(ValueError, match="cannot rename a directory"):
        Checkpointer("gs://bucket/run/checkpoints", every_steps=4, atomicity="rename")
