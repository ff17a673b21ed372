"""`llava-jax data pack` refuses what would leave a wrong pack, and never damages an earlier one."""

import json
import os

import numpy as np
import pytest

from llava_jax import cli
from llava_jax.data.pack import PackError, pack
from llava_jax.data.sources import ArrayRecordSource, open_source
from tests.data import helpers


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """Two LLaVA JSON datasets sharing one image root: 15 and 11 examples."""
    base = str(tmp_path_factory.mktemp("two"))
    big, root = helpers.write_dataset(os.path.join(base, "big"), n=15)
    small, _ = helpers.write_dataset(os.path.join(base, "small"), n=11)
    return big, small, root, os.path.dirname(small)


def _snapshot(folder) -> dict:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_repack_into_an_occupied_folder_is_refused_and_the_old_pack_kept(two_datasets, tmp_path, capsys):
    big, small, root, small_root = two_datasets
    out = tmp_path / "packed"
    assert cli.main(["data", "pack", big, root, str(out), "--workers", "1"]) == 0
    before = _snapshot(out)
    rc = cli.main(["data", "pack", small, os.path.join(small_root, "images"), str(out), "--workers", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty" in err and "--overwrite" in err
    assert _snapshot(out) == before  # byte for byte
    assert not os.path.exists(f"{out}.partial")
    # --overwrite replaces the pack: nothing of the old one is left to mix in.
    rc = cli.main(["data", "pack", small, os.path.join(small_root, "images"), str(out), "--overwrite"])
    assert rc == 0
    source = open_source(str(out))
    assert len(source) == 11 and len(source.modality_lengths()) == 11
    assert json.loads((out / "metadata.json").read_text())["num_input"] == 11


def test_overwrite_never_deletes_a_folder_that_is_not_a_pack(two_datasets, tmp_path):
    big, _, root, _ = two_datasets
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(PackError, match="not part of a pack"):
        pack(big, root, str(out), overwrite=True, verbose=False)
    assert (out / "notes.txt").read_text() == "keep me" and os.listdir(out) == ["notes.txt"]


@pytest.mark.parametrize("content", [b"", b"[]", b" [ ]\n"])
def test_empty_input_is_refused_before_anything_is_written(tmp_path, content):
    path = tmp_path / "empty.json"
    path.write_bytes(content)
    (tmp_path / "images").mkdir()
    with pytest.raises(PackError, match="holds no examples"):
        pack(str(path), str(tmp_path / "images"), str(tmp_path / "out"), verbose=False)
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "out.partial")


def test_nothing_packable_is_an_error_not_an_empty_pack(two_datasets, tmp_path):
    big, *_ = two_datasets
    with open(big) as f:
        images_only = [e for e in json.load(f) if "image" in e]
    (tmp_path / "images_only.json").write_text(json.dumps(images_only))
    wrong_root = tmp_path / "wrong"
    wrong_root.mkdir()
    with pytest.raises(PackError, match=r"no example .* could be packed.*missing_image.*right image root"):
        pack(str(tmp_path / "images_only.json"), str(wrong_root), str(tmp_path / "out"), verbose=False)
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "out.partial")


def test_a_mixed_pack_folder_is_refused_when_read(two_datasets, tmp_path):
    """A folder filled by an older pack version (shards of two runs, one lengths.npy) is named, not read."""
    big, small, root, small_root = two_datasets
    a, b = tmp_path / "a", tmp_path / "b"
    pack(big, root, str(a), verbose=False)
    pack(small, os.path.join(small_root, "images"), str(b), verbose=False)
    for name in os.listdir(b):
        if name.endswith(".array_record"):
            os.replace(b / name, a / f"old-{name}")
    with pytest.raises(ValueError, match="26 records but lengths.npy describes 15"):
        ArrayRecordSource(str(a))
    np.testing.assert_array_equal(np.load(a / "lengths.npy").shape, (15,))
