"""`save_native` / `load_native` on storage without directory renames (FUSE-mounted buckets) and on `gs://`."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from etils import epath
from tokenizers import Tokenizer, models

from llava_jax.convert import native
from llava_jax.convert.native import is_native, load_native, save_native
from llava_jax.model.params import abstract_params
from llava_jax.presets import tiny
from tests.convert.storage_guards import forbid_directory_renames, forbid_os_calls_on_urls


@pytest.fixture(scope="module")
def params():
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), abstract_params(tiny()))


def _tokenizer():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _assert_same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.parametrize("lazy", [False, True], ids=["tree", "iterable"])
def test_commit_file_save_renames_no_directory(params, tmp_path, monkeypatch, lazy):
    directory = tmp_path / "final"
    attempts = forbid_directory_renames(monkeypatch, tmp_path)
    # The iterable form `save_native` streams (what `convert` hands it): (key path, array) pairs.
    pairs = ((tuple(k.key for k in path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params))
    given = pairs if lazy else params
    save_native(str(directory), given, tiny(), _tokenizer(), atomicity="commit_file")
    assert attempts == []
    assert is_native(str(directory)) and (directory / "tokenizer.json").exists()
    assert not os.path.exists(f"{directory}.partial")
    config, loaded = load_native(str(directory))
    assert config == tiny()
    _assert_same(loaded, params)


def test_rename_save_is_what_the_guard_catches(params, tmp_path, monkeypatch):
    """The default on local disks moves a staging directory in: the guard (a bucket) refuses it."""
    attempts = forbid_directory_renames(monkeypatch, tmp_path)
    with pytest.raises(OSError, match="directory rename forbidden"):
        save_native(str(tmp_path / "final"), params, tiny(), atomicity="rename")
    assert attempts


@pytest.mark.parametrize("atomicity", ["commit_file", "rename"])
def test_an_interrupted_save_is_not_a_checkpoint_and_is_replaced(params, tmp_path, atomicity):
    directory = tmp_path / "final"
    save_native(str(directory), params, tiny(), atomicity=atomicity)
    # What a save stopped before its last file leaves: the parameters, no config.json.
    os.remove(directory / "config.json")
    assert not is_native(str(directory))
    save_native(str(directory), params, tiny(), atomicity=atomicity)
    _assert_same(load_native(str(directory))[1], params)
    with pytest.raises(Exception, match="already holds a checkpoint"):
        save_native(str(directory), params, tiny(), atomicity=atomicity)


def test_auto_picks_commit_file_on_a_gcsfuse_mount(params, tmp_path, monkeypatch):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nmy-bucket {tmp_path}/bucket fuse.gcsfuse rw,nosuid 0 0\n")
    monkeypatch.setattr(native.storage, "MOUNTS_FILE", str(mounts))
    attempts = forbid_directory_renames(monkeypatch, tmp_path)
    save_native(str(tmp_path / "bucket" / "run" / "final"), params, tiny())
    assert attempts == [] and is_native(str(tmp_path / "bucket" / "run" / "final"))


def _mock_bucket(root):
    """epath with gs://BUCKET/... redirected to ROOT/BUCKET/... (a local stand-in for the object store)."""

    def local(path):
        text = os.fspath(path)
        return str(root / text[len("gs://") :]) if text.startswith("gs://") else text

    def redirect(original, path, *args, **kwargs):
        if args and isinstance(args[0], (str, os.PathLike)) and os.fspath(args[0]).startswith("gs://"):
            args = (local(args[0]), *args[1:])  # rename / replace / copy targets
        return original(local(path), *args, **kwargs)

    names = ("copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rename")
    names += ("replace", "rmtree", "stat", "walk")
    return epath.testing.mock_epath(**dict.fromkeys(names, redirect)), local


def test_a_gs_url_is_written_and_read_through_epath_only(params, tmp_path, monkeypatch):
    """No os.path on the URL (it would write ./gs:/bucket/...); orbax gets the URL; config.json comes last."""
    mock, local = _mock_bucket(tmp_path)
    events = []
    real_save, real_load = native.ocp.save, native.ocp.load

    def save(path, tree):  # tensorstore would write gs:// itself; here it writes the stand-in
        events.append(("params", os.fspath(path)))
        real_save(local(path), tree)

    def load(path, target):
        events.append(("load", os.fspath(path)))
        return real_load(local(path), target)

    monkeypatch.setattr(native.ocp, "save", save)
    monkeypatch.setattr(native.ocp, "load", load)
    url = "gs://bucket/run/final"
    with mock:
        calls = forbid_os_calls_on_urls(monkeypatch)
        save_native(url, params, tiny(), _tokenizer())
        assert is_native(url)
        config, loaded = load_native(url)
    assert calls == []
    assert events == [("params", f"{url}/params"), ("load", f"{url}/params")]
    _assert_same(loaded, params)
    written = tmp_path / "bucket" / "run" / "final"
    assert (written / "config.json").exists() and (written / "tokenizer.json").exists()
    # config.json, the commit marker, is the newest file.
    newest = max((p for p in written.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == "config.json"
    assert not (tmp_path / "gs:").exists()
