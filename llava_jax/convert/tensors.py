"""Reading and writing checkpoint tensors without unpickling and without whole-file copies.

Safetensors files are read with `safetensors.safe_open(path, framework="numpy",
backend="pread")`, tensor by tensor (BF16 comes back as `ml_dtypes.bfloat16`,
bit for bit), so peak memory is one tensor; the library checks the header against the file size
when it opens a file, which catches a truncated file or one that is not
safetensors at all. `.bin` files go through `torch.load(weights_only=True, mmap=True)`.

Writing stays here: `safetensors.serialize_file` takes every tensor's buffer at
once, while the exporter produces one tensor at a time, so `write_safetensors`
fixes the header from the shapes up front and streams the data after it.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from collections.abc import Iterable, Iterator

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

# numpy dtype -> the header's dtype name, for the writer.
_DTYPE_NAMES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: names the file, key and shapes at fault."""


class SafetensorsFile:
    """Random access to the tensors of one `.safetensors` file."""

    def __init__(self, path: str):
        self.path = path
        try:
            # pread, not the default mmap: with mmap every page read stays in the process's RSS until the
            # file is closed (a 400 MB file read tensor by tensor: peak RSS 466 MB with mmap, 66 MB with pread).
            self._file = safe_open(path, framework="numpy", backend="pread")
        except SafetensorError as e:
            raise CheckpointError(f"{path}: truncated safetensors file or not a safetensors file ({e})") from e

    def keys(self) -> list[str]:
        return list(self._file.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        try:
            return tuple(self._file.get_slice(key).get_shape())
        except SafetensorError as e:
            raise CheckpointError(f"{self.path}: cannot read tensor {key!r} ({e})") from e

    def get(self, key: str) -> np.ndarray:
        """The tensor `key` as a fresh numpy array."""
        try:
            return self._file.get_tensor(key)
        except SafetensorError as e:
            raise CheckpointError(f"{self.path}: cannot read tensor {key!r} ({e})") from e
        except (AttributeError, TypeError) as e:  # e.g. F8_E4M3: safetensors finds no numpy dtype for it
            dtype = self._file.get_slice(key).get_dtype()
            raise CheckpointError(f"{self.path}: tensor {key!r} has unsupported dtype {dtype} ({e})") from e


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
