"""Safetensors reading (through `safetensors.safe_open`) and streaming writing; bad files name file and key."""

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest

from llava_jax.convert.tensors import CheckpointError, SafetensorsFile, open_weights, write_safetensors


def _write(path, tensors):
    write_safetensors(str(path), iter(tensors.items()), {k: (v.shape, v.dtype) for k, v in tensors.items()})


@pytest.fixture
def tensors():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**16, size=(5, 7), dtype=np.uint16)
    bits[0, :4] = [0x7FC1, 0xFFFF, 0x8000, 0x7F80]  # NaN payloads, -0, inf: bit-exact or not at all
    return {
        "half": bits.view(ml_dtypes.bfloat16),
        "full": rng.standard_normal((3, 4)).astype(np.float32),
        "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        "mask": np.array([True, False]),
    }


def test_round_trip_is_bit_exact_including_bfloat16(tmp_path, tensors):
    _write(tmp_path / "m.safetensors", tensors)
    f = SafetensorsFile(str(tmp_path / "m.safetensors"))
    assert sorted(f.keys()) == sorted(tensors)
    for key, want in tensors.items():
        got = f.get(key)
        assert got.dtype == want.dtype and f.shape(key) == want.shape, key
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=key)
    # Streamed in any order; the library reads what the writer's header promised.
    from safetensors.numpy import load_file

    assert (
        load_file(str(tmp_path / "m.safetensors"))["half"].view(np.uint16).tolist()
        == tensors["half"].view(np.uint16).tolist()
    )


def test_writer_checks_shapes_and_completeness(tmp_path, tensors):
    specs = {k: (v.shape, v.dtype) for k, v in tensors.items()}
    with pytest.raises(
        CheckpointError, match=r"w.safetensors: tensor 'full' is float32\(4, 3\), header says F32\(3, 4\)"
    ):
        write_safetensors(str(tmp_path / "w.safetensors"), iter([("full", tensors["full"].T.copy())]), specs)
    with pytest.raises(CheckpointError, match=r"w.safetensors: tensors never written: \['half', 'ids', 'mask'\]"):
        write_safetensors(str(tmp_path / "w.safetensors"), iter([("full", tensors["full"])]), specs)
    assert not os.path.exists(tmp_path / "w.safetensors")  # only complete files take the final name


def test_truncated_file_names_the_file(tmp_path, tensors):
    path = tmp_path / "cut.safetensors"
    _write(path, tensors)
    size = os.path.getsize(path)
    for keep in (size - 3, 12, 5, 0):  # inside the data, inside the header, inside the length, empty
        with open(path, "r+b") as f:
            f.truncate(keep)
        with pytest.raises(CheckpointError, match=r"cut.safetensors: truncated safetensors file or not a"):
            SafetensorsFile(str(path))


def test_not_a_safetensors_file_despite_its_name(tmp_path):
    import torch

    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(3)}, path)  # a pickle archive
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated safetensors file or not a safetensors"):
        open_weights([str(path)])
    path.write_text("<html>rate limited</html>" * 20)
    with pytest.raises(CheckpointError, match=r"model.safetensors: .*not a safetensors file"):
        open_weights([str(path)])
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 9]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(9))  # 9 bytes cannot hold 2 float32
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated safetensors file or not a"):
        SafetensorsFile(str(path))


def test_missing_key_and_unsupported_dtype_name_file_and_key(tmp_path, tensors):
    _write(tmp_path / "m.safetensors", tensors)
    f = SafetensorsFile(str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match=r"m.safetensors: cannot read tensor 'nope'"):
        f.get("nope")
    with pytest.raises(CheckpointError, match=r"m.safetensors: cannot read tensor 'nope'"):
        f.shape("nope")
    header = json.dumps({"f8": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}).encode()
    (tmp_path / "f8.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(2))
    with pytest.raises(CheckpointError, match=r"f8.safetensors: tensor 'f8' has unsupported dtype F8_E4M3"):
        SafetensorsFile(str(tmp_path / "f8.safetensors")).get("f8")


def test_duplicate_keys_across_shards(tmp_path, tensors):
    _write(tmp_path / "a.safetensors", {"full": tensors["full"]})
    _write(tmp_path / "b.safetensors", {"full": tensors["full"], "ids": tensors["ids"]})
    with pytest.raises(CheckpointError, match=r"tensor 'full' appears in both .*a.safetensors and .*b.safetensors"):
        open_weights([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")])
