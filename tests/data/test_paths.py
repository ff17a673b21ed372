"""Image references stay inside their root, and only bounded regular files are read (llava_jax.data.paths).

The same rule holds for `llava-jax data pack`, training's JSON source and the
evaluation image folders; each entry point is checked here against the same
hostile references: an absolute path, a `..` climb, a symbolic link out, a
FIFO and `/dev/zero`.
"""

import json
import os
import threading

import pytest

from llava_jax.data.encode import EncodeFn
from llava_jax.data.paths import ImageFileError, ImageRoot, check_image_file, read_image_file
from llava_jax.data.pipeline import DataConfig
from llava_jax.data.sources import JsonSource

JPEG = b"\xff\xd8\xff\xe0" + b"photo" * 20


@pytest.fixture
def root(tmp_path):
    """An image root with a photo, a subfolder, a link inside, a link out, and a FIFO; a secret beside it."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "ok.jpg").write_bytes(JPEG)
    (images / "sub" / "deep.jpg").write_bytes(JPEG)
    (tmp_path / "secret.txt").write_text("password")
    os.symlink(images / "ok.jpg", images / "alias.jpg")
    os.symlink(tmp_path / "secret.txt", images / "leak.jpg")
    os.symlink(tmp_path, images / "up")  # a linked folder leading out
    os.mkfifo(images / "pipe.jpg")
    return images


HOSTILE = {
    "absolute": ("/etc/passwd", "absolute path"),
    "dotdot": ("../secret.txt", "climbs out"),
    "deep_dotdot": ("sub/../../../../etc/hostname", "climbs out"),
    "symlink_file": ("leak.jpg", "symbolic link"),
    "symlink_dir": ("up/secret.txt", "symbolic link"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_references_leaving_the_root_are_refused(root, name):
    ref, words = HOSTILE[name]
    with pytest.raises(ImageFileError, match=words) as info:
        ImageRoot(root).resolve(ref)
    assert info.value.reason == "image_outside_root"
    assert "--allow-outside-root" in str(info.value)


def test_references_inside_the_root_resolve(root):
    r = ImageRoot(root)
    assert r.resolve("ok.jpg") == os.path.join(root, "ok.jpg")
    assert r.resolve("sub/../ok.jpg") == os.path.join(root, "sub/../ok.jpg")  # '..' that stays inside
    assert read_image_file(r.resolve("alias.jpg")) == JPEG  # a link to a file inside the root
    # A root given through a symbolic link is the same folder.
    link = root.parent / "root_link"
    os.symlink(root, link)
    assert read_image_file(ImageRoot(link).resolve("sub/deep.jpg")) == JPEG


def test_allow_outside_root_lets_them_through(root):
    r = ImageRoot(root, allow_outside_root=True)
    assert read_image_file(r.resolve("../secret.txt")) == b"password"
    assert r.resolve("/etc/passwd") == "/etc/passwd"


def _in_thread(fn, timeout=10.0):
    """fn() in a daemon thread; fails (instead of hanging the suite) if it does not return in time."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "read blocked"
    return out


def test_only_bounded_regular_files_are_read(root):
    fifo = _in_thread(lambda: read_image_file(str(root / "pipe.jpg")))
    assert isinstance(fifo["error"], ImageFileError) and fifo["error"].reason == "not_a_regular_file"
    assert "FIFO" in str(fifo["error"])
    with pytest.raises(ImageFileError, match="character device") as info:
        read_image_file("/dev/zero")
    assert info.value.reason == "not_a_regular_file"
    with pytest.raises(ImageFileError, match="byte cap") as info:
        read_image_file(str(root / "ok.jpg"), max_bytes=10)
    assert info.value.reason == "image_too_large"
    with pytest.raises(ImageFileError) as info:
        read_image_file(str(root / "nope.jpg"))
    assert info.value.reason == "missing_image"
    assert read_image_file(str(root / "ok.jpg"), max_bytes=len(JPEG)) == JPEG
    # The stat-only check used before decoding at train time applies the same rule.
    for path, reason in (
        (root / "pipe.jpg", "not_a_regular_file"),
        (root / "nope.jpg", "missing_image"),
        (root / "sub", "not_a_regular_file"),
    ):
        with pytest.raises(ImageFileError) as info:
            check_image_file(str(path))
        assert info.value.reason == reason
    with pytest.raises(ImageFileError) as info:
        check_image_file(str(root / "ok.jpg"), max_bytes=10)
    assert info.value.reason == "image_too_large"


def _write_json(path, refs):
    examples = [
        {
            "id": f"ex{i}",
            "image": ref,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is it?"},
                {"from": "gpt", "value": "A photo."},
            ],
        }
        for i, ref in enumerate(refs)
    ]
    path.write_text(json.dumps(examples))
    return str(path)


def test_training_source_and_encoder_skip_them_by_reason(root, tmp_path):
    refs = ["ok.jpg", "/etc/passwd", "../secret.txt", "leak.jpg", "pipe.jpg", "/dev/zero"]
    source = JsonSource(_write_json(tmp_path / "train.json", refs), str(root))
    reasons = [source[i].get("_reason") for i in range(len(source))]
    assert reasons == [
        None,
        "image_outside_root",
        "image_outside_root",
        "image_outside_root",
        None,
        "image_outside_root",
    ]
    assert source[0]["image"] == os.path.join(str(root), "ok.jpg")

    class Tok:  # EncodeFn stops at the error record before it tokenizes anything
        bos_token_id = 1

    encode = EncodeFn(Tok(), DataConfig(image_seq_length=4, max_length=64))
    for i, reason in enumerate(reasons):
        if reason is not None:
            out = encode(source[i])
            assert out == {"id": f"ex{i}", "_skip": "image_outside_root"}
    allowed = JsonSource(str(tmp_path / "train.json"), str(root), allow_outside_root=True)
    assert allowed[1]["image"] == "/etc/passwd" and "_reason" not in allowed[5]


def test_training_encoder_refuses_a_fifo_and_an_oversized_file(root, tokenizer):
    config = DataConfig(image_seq_length=4, max_length=256, image_token_index=-200)
    example = {
        "id": "fifo",
        "image": str(root / "pipe.jpg"),
        "conversations": [{"from": "human", "value": "<image>\nHi?"}, {"from": "gpt", "value": "Yes."}],
    }
    assert _in_thread(lambda: EncodeFn(tokenizer, config)(example))["value"]["_skip"] == "not_a_regular_file"
    big = {**example, "id": "big", "image": str(root / "ok.jpg")}
    small_cap = DataConfig(image_seq_length=4, max_length=256, image_token_index=-200, max_image_bytes=10)
    assert EncodeFn(tokenizer, small_cap)(big) == {"id": "big", "_skip": "image_too_large"}
    assert "input_ids" in EncodeFn(tokenizer, config)(big)


def test_pack_skips_them_and_packs_no_outside_byte(root, tmp_path, capsys):
    from llava_jax import cli
    from llava_jax.data.sources import open_source

    refs = ["ok.jpg", "/etc/passwd", "../../../../etc/hostname", "leak.jpg", "up/secret.txt", "pipe.jpg"]
    path = _write_json(tmp_path / "data.json", refs)
    out = tmp_path / "packed"
    result = _in_thread(lambda: cli.main(["data", "pack", path, str(root), str(out), "--workers", "2"]), timeout=60)
    assert result["value"] == 0
    with open(out / "metadata.json") as f:
        meta = json.load(f)
    assert meta["num_examples"] == 1
    assert meta["skipped"] == {"image_outside_root": 4, "not_a_regular_file": 1}
    assert [i for i, _ in meta["skipped_ids"]] == ["ex1", "ex2", "ex3", "ex4", "ex5"]
    packed = b"".join((out / n).read_bytes() for n in os.listdir(out) if n.endswith(".array_record"))
    assert b"password" not in packed and b"root:" not in packed
    assert open_source(str(out))[0]["image"] == JPEG


def test_pack_allow_outside_root_and_size_cap(root, tmp_path, capsys):
    from llava_jax import cli
    from llava_jax.data.sources import open_source

    path = _write_json(tmp_path / "data.json", ["ok.jpg", "../secret.txt", "/dev/zero"])
    out = tmp_path / "allowed"
    assert cli.main(["data", "pack", path, str(root), str(out), "--allow-outside-root", "--workers", "1"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["skipped"] == {"not_a_regular_file": 1}  # /dev/zero: never read, even when allowed
    assert open_source(str(out))[1]["image"] == b"password"
    (root / "tiny.jpg").write_bytes(JPEG[:8])
    path = _write_json(tmp_path / "capped.json", ["ok.jpg", "tiny.jpg"])
    capped = tmp_path / "capped"
    rc = cli.main(["data", "pack", path, str(root), str(capped), "--max-image-mb", "0.00001", "--workers", "1"])
    assert rc == 0  # the cap: 10 bytes
    meta = json.loads((capped / "metadata.json").read_text())
    assert meta["skipped"] == {"image_too_large": 1} and meta["skipped_ids"] == [["ex0", "image_too_large"]]
    assert open_source(str(capped))[0]["image"] == JPEG[:8]
