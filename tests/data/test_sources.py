"""Sources: lazy JSON/JSONL, the ArrayRecord pack (CLI) and the TFDS builder give the same examples."""

import json
import os
import pickle

import numpy as np
import pytest

from llava_jax import cli
from llava_jax.data.sources import (
    ArrayRecordSource,
    JsonSource,
    deserialize_record,
    open_source,
    serialize_record,
    word_length,
)
from tests.data import helpers


def raw_examples(path):
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        return json.load(f)


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_source_random_access(tmp_path, fmt):
    path, root = helpers.write_dataset(str(tmp_path), n=12, fmt=fmt)
    source = JsonSource(path, root)
    expected = raw_examples(path)
    assert len(source) == 12
    for i in (5, 0, 11, 3):
        example = source[i]
        assert example["id"] == expected[i]["id"]
        assert example["conversations"] == expected[i]["conversations"]
        if "image" in expected[i]:
            assert example["image"] == os.path.join(root, expected[i]["image"])
            assert os.path.isfile(example["image"])
        else:
            assert example.get("image") is None
    assert source[12]["id"] == expected[0]["id"]  # grain's repeat indexes past the end
    lengths = source.modality_lengths()
    assert lengths.dtype == np.int32 and len(lengths) == 12
    assert all((lengths[i] > 0) == ("image" in e) for i, e in enumerate(expected))
    # Pickles as path + offsets (grain workers), not as parsed data.
    clone = pickle.loads(pickle.dumps(source))
    assert clone[7] == source[7]
    assert len(pickle.dumps(source)) < 2000


def test_json_source_bad_records(tmp_path):
    good = {
        "id": "g",
        "image": "a.jpg",
        "conversations": [{"from": "human", "value": "<image>\nQ"}],
    }
    raw = (
        b"[\n" + json.dumps(good).encode() + b",\n"
        b'{"id": "bad\xff", "conversations": [{"from": "human", "value": "caf\xe9"}]},\n'
        b'{"id": "noconv"},\n'
        b'{"id": "img", "image": 5, "conversations": []},\n'
        b'  "not an object"  \n]'
    )
    path = tmp_path / "bad.json"
    path.write_bytes(raw)
    source = JsonSource(str(path), str(tmp_path))
    assert len(source) == 5
    assert source[0]["image"] == os.path.join(str(tmp_path), "a.jpg")
    assert source[1]["_reason"] == "non_utf8" and source[1]["id"].startswith("bad")
    assert source[2] == {"id": "noconv"}
    assert source[3]["_reason"] == "malformed" and source[3]["id"] == "img"
    assert source[4]["_reason"] == "malformed"
    (tmp_path / "broken.json").write_text('[{"id": 1}, {"id": ')
    with pytest.raises(ValueError, match="invalid JSON"):
        JsonSource(str(tmp_path / "broken.json"))
    (tmp_path / "empty.json").write_text(" [ ] ")
    assert len(JsonSource(str(tmp_path / "empty.json"))) == 0


def test_word_length_is_the_reference_modality_length():
    ex = {
        "image": "x",
        "conversations": [{"value": "<image>\nWhat is  it?"}, {"value": "A cat."}],
    }
    assert word_length(ex) == 6  # "<image>" counts as a word, as in the reference
    assert word_length({"conversations": ex["conversations"]}) == -6


def test_record_roundtrip():
    ex = {
        "id": "é1",
        "image": "a/b.jpg",
        "conversations": [{"from": "human", "value": "日本"}],
    }
    back = deserialize_record(serialize_record(ex, b"\xff\xd8jpeg"))
    assert back == {**ex, "image": b"\xff\xd8jpeg"}
    text_only = deserialize_record(serialize_record({"id": "t", "conversations": []}, None))
    assert text_only["image"] is None
    assert deserialize_record(b"garbage", 3)["_reason"] == "malformed"


def test_pack_cli_roundtrip(tmp_path, capsys):
    path, root = helpers.write_dataset(str(tmp_path / "ds"), n=23)
    examples = raw_examples(path)
    # One example whose image file is missing: skipped at pack time, listed by id.
    os.remove(os.path.join(root, examples[4]["image"]))
    out = str(tmp_path / "packed")
    rc = cli.main(["data", "pack", path, root, out, "--shard-size", "10", "--workers", "2"])
    assert rc == 0
    assert "wrote 22 of 23" in capsys.readouterr().out
    with open(os.path.join(out, "metadata.json")) as f:
        meta = json.load(f)
    assert meta["num_examples"] == 22 and meta["skipped"] == {"missing_image": 1}
    assert meta["skipped_ids"] == [[examples[4]["id"], "missing_image"]]
    assert len([f for f in os.listdir(out) if f.endswith(".array_record")]) == 3
    source = open_source(out)
    assert isinstance(source, ArrayRecordSource) and len(source) == 22
    kept = [e for i, e in enumerate(examples) if i != 4]
    json_source = JsonSource(path, root)
    for i, expected in enumerate(kept):
        got = source[i]
        assert got["id"] == expected["id"] and got["conversations"] == expected["conversations"]
        if "image" in expected:
            with open(os.path.join(root, expected["image"]), "rb") as f:
                assert got["image"] == f.read()
        else:
            assert got["image"] is None
    np.testing.assert_array_equal(source.modality_lengths(), np.delete(json_source.modality_lengths(), 4))
    # Strict mode stops at the missing image with its id.
    rc = cli.main(["data", "pack", path, root, str(tmp_path / "strict"), "--on-error", "strict"])
    assert rc == 2 and examples[4]["id"] in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "strict") and not os.path.exists(tmp_path / "strict.partial")


def test_tfds_builder(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    # tfds needs it for builders inside packages but does not declare it.
    pytest.importorskip("importlib_resources")
    from llava_jax.data.tfds_builder import LlavaJson, tfds_source

    manual = tmp_path / "manual"
    path, _ = helpers.write_dataset(str(manual), n=9)
    # The config's layout: manual_dir/data.json with images under manual_dir/images.
    examples = raw_examples(path)
    for e in examples:
        if "image" in e:
            e["image"] = "images/" + e["image"]
    with open(manual / "data.json", "w") as f:
        json.dump(examples, f)
    data_dir = str(tmp_path / "tfds")
    builder = LlavaJson(config="custom", data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    source = tfds_source(data_dir, config="custom")
    assert len(source) == 9
    for i, expected in enumerate(examples):
        got = source[i]
        assert got["id"] == expected["id"] and got["conversations"] == expected["conversations"]
        if "image" in expected:
            assert got["image"] == (manual / expected["image"]).read_bytes()
        else:
            assert got["image"] is None
    np.testing.assert_array_equal(
        source.modality_lengths(),
        JsonSource(str(manual / "data.json")).modality_lengths(),
    )
