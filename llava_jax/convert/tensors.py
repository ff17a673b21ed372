"""Reading and writing checkpoint tensors without unpickling and without whole-file copies.

Safetensors files are parsed here (8-byte header length, JSON header, raw
little-endian data) and read tensor by tensor with plain file reads, so peak
memory is one tensor, and a truncated file is caught from its header.
`.bin` files go through `torch.load(weights_only=True, mmap=True)`.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from collections.abc import Iterable, Iterator

import ml_dtypes
import numpy as np

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: names the file, key and shapes at fault."""


class SafetensorsFile:
    """Random access to the tensors of one `.safetensors` file."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointError(f"{path}: truncated or not a safetensors file (header says {n} bytes)")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._entries = header
        end = max((e["data_offsets"][1] for e in header.values()), default=0)
        if self._data_start + end > size:
            raise CheckpointError(
                f"{path}: truncated safetensors file: header needs {self._data_start + end} bytes, file has {size}"
            )

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def dtype(self, key: str) -> np.dtype:
        name = self._entries[key]["dtype"]
        if name not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {key!r} has unsupported dtype {name}")
        return SAFETENSORS_DTYPES[name]

    def get(self, key: str) -> np.ndarray:
        """The tensor `key` as a fresh numpy array (one read, no memory map)."""
        entry = self._entries[key]
        start, end = entry["data_offsets"]
        dtype = self.dtype(key)
        out = np.empty(self.shape(key), dtype)
        if out.nbytes != end - start:
            raise CheckpointError(f"{self.path}: tensor {key!r} byte size disagrees with its shape")
        with open(self.path, "rb") as f:
            f.seek(self._data_start + start)
            view = memoryview(out.reshape(-1).view(np.uint8))
            got = f.readinto(view)
        if got != end - start:
            raise CheckpointError(f"{self.path}: tensor {key!r} is truncated")
        return out


class TorchBinFile:
    """Tensors of a PyTorch `.bin` file, loaded with `weights_only=True` (no arbitrary unpickling)."""

    def __init__(self, path: str):
        import torch

        self.path = path
        try:
            self._state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises many types for bad files
            raise CheckpointError(f"{path}: cannot be read as a weights-only PyTorch checkpoint ({e})") from e
        if not isinstance(self._state, dict):
            raise CheckpointError(f"{path}: expected a state dict, got {type(self._state).__name__}")

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)

    def get(self, key: str) -> np.ndarray:
        import torch

        t = self._state[key]
        if t.dtype == torch.bfloat16:
            return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
        return t.contiguous().numpy().copy()


def weight_files(directory: str) -> list[str]:
    """Weight files of an HF-style directory: safetensors first (index, single, shards), else `.bin`."""
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: not a directory")
    for index_name, pattern in (
        ("model.safetensors.index.json", "*.safetensors"),
        ("pytorch_model.bin.index.json", "*.bin"),
    ):
        index = os.path.join(directory, index_name)
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            paths = [os.path.join(directory, name) for name in files]
            missing = [p for p in paths if not os.path.exists(p)]
            if missing:
                raise CheckpointError(f"{index}: lists missing shard(s) {missing}")
            return paths
        found = sorted(glob.glob(os.path.join(directory, pattern)))
        found = [p for p in found if not os.path.basename(p).startswith("training_args")]
        if found:
            return found
    raise CheckpointError(f"{directory}: no *.safetensors or *.bin weight files")


def open_weights(paths: Iterable[str]) -> dict[str, SafetensorsFile | TorchBinFile]:
    """Map every tensor key to the open file holding it (duplicate keys are an error)."""
    where: dict[str, SafetensorsFile | TorchBinFile] = {}
    for path in paths:
        f = SafetensorsFile(path) if path.endswith(".safetensors") else TorchBinFile(path)
        for key in f.keys():
            if key in where:
                raise CheckpointError(f"tensor {key!r} appears in both {where[key].path} and {path}")
            where[key] = f
    return where


def _header_entry(arr_shape, dtype, offset) -> dict:
    nbytes = int(np.prod(arr_shape, dtype=np.int64)) * dtype.itemsize
    return {"dtype": _DTYPE_NAMES[dtype], "shape": list(arr_shape), "data_offsets": [offset, offset + nbytes]}


def write_safetensors(
    path: str, tensors: Iterator[tuple[str, np.ndarray]], specs: dict[str, tuple], metadata: dict | None = None
) -> None:
    """Stream tensors into one safetensors file.

    Args:
      path: output file.
      tensors: (key, array) pairs, produced lazily, in any order of `specs`.
      specs: key -> (shape, numpy dtype) for every tensor, fixing the header up front.
      metadata: string -> string header metadata (default {'format': 'pt'}).
    """
    header, offset = {}, 0
    for key in sorted(specs):
        shape, dtype = specs[key]
        header[key] = _header_entry(shape, np.dtype(dtype), offset)
        offset = header[key]["data_offsets"][1]
    header["__metadata__"] = metadata or {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        start = f.tell()
        written = set()
        for key, arr in tensors:
            entry = header[key]
            arr = np.ascontiguousarray(arr)
            if list(arr.shape) != entry["shape"] or _DTYPE_NAMES[arr.dtype] != entry["dtype"]:
                raise CheckpointError(
                    f"{path}: tensor {key!r} is {arr.dtype}{arr.shape}, header says "
                    f"{entry['dtype']}{tuple(entry['shape'])}"
                )
            f.seek(start + entry["data_offsets"][0])
            f.write(arr.reshape(-1).view(np.uint8).data)
            written.add(key)
        if written != set(specs):
            raise CheckpointError(f"{path}: tensors never written: {sorted(set(specs) - written)[:5]}")
    os.replace(tmp, path)
