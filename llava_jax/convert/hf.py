"""HF / original-LLaVA tensors <-> llava_jax parameter trees.

Reading validates everything from the file headers before any data moves:
every parameter's tensor present, every tensor in the file used, every
shape right. Parameters are then built one at a time (sharded straight onto
a mesh when one is given), so the host holds at most one full parameter
beside the result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import numpy as np

from llava_jax.config import LlavaConfig
from llava_jax.convert.keymap import TensorSpec, canonical_key, hf_save_key, tensor_specs, torch_shape
from llava_jax.convert.tensors import CheckpointError, open_weights, write_safetensors
from llava_jax.model.params import abstract_params, param_shardings
from llava_jax.sharding import DEFAULT_RULES, Rules

MAX_SHARD_BYTES = 5 * 1024**3


def canonical_sources(paths: list[str], *, where: str) -> dict[str, tuple[object, str]]:
    """canonical key -> (open file, key in file) for all tensors of `paths` (ignored keys dropped)."""
    out: dict[str, tuple[object, str]] = {}
    for key, f in open_weights(paths).items():
        try:
            canon = canonical_key(key)
        except KeyError:
            raise CheckpointError(
                f"{where}: unexpected tensor {key!r} in {f.path} (not a LLaVA/CLIP/LLaMA key)"
            ) from None
        if canon is None:
            continue
        if canon in out:
            raise CheckpointError(f"{where}: tensors {out[canon][1]!r} and {key!r} both map to {canon!r}")
        out[canon] = (f, key)
    return out


def _get_in(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set_in(tree: dict, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def validate(
    specs: list[TensorSpec],
    abstract,
    sources: Mapping[str, tuple[object, str]],
    *,
    where: str,
    allow_unused_prefixes: tuple[str, ...] = (),
) -> None:
    """Raise `CheckpointError` naming the key for any missing, unexpected or mis-shaped tensor."""
    used = set()
    for spec in specs:
        layer_shape = tuple(_get_in(abstract, spec.path).shape)
        if spec.layers is not None:
            layer_shape = layer_shape[1:]
        want = torch_shape(spec.kind, layer_shape)
        for key in spec.keys():
            if key not in sources:
                raise CheckpointError(f"{where}: missing tensor for {key!r} (parameter {'/'.join(spec.path)})")
            f, name = sources[key]
            got = tuple(f.shape(name))
            if got != want:
                raise CheckpointError(f"{where}: tensor {name!r} in {f.path} has shape {got}, expected {want}")
            used.add(key)
    extra = sorted(k for k in set(sources) - used if not k.startswith(allow_unused_prefixes))
    if extra:
        f, name = sources[extra[0]]
        raise CheckpointError(
            f"{where}: unexpected tensor {name!r} in {f.path} ({len(extra)} unused tensor(s), e.g. {extra[:3]})"
        )


def _full_param(spec: TensorSpec, shape, dtype, sources) -> np.ndarray:
    if spec.layers is None:
        f, name = sources[spec.key]
        return np.asarray(spec.to_jax(f.get(name), tuple(shape)), dtype=dtype)
    out = np.empty(shape, dtype)
    for i, key in enumerate(spec.keys()):
        f, name = sources[key]
        out[i] = spec.to_jax(f.get(name), tuple(shape[1:]))
    return out


def iter_params(
    config: LlavaConfig,
    sources: Mapping[str, tuple[object, str]],
    *,
    dtype,
    parts=("vision", "projector", "llm"),
    mesh=None,
    rules: Rules = DEFAULT_RULES,
    where: str = "checkpoint",
    allow_unused_prefixes: tuple[str, ...] = (),
):
    """Yield (parameter path, jax.Array) one parameter at a time, after validating every tensor.

    Args:
      config: the model config (parameter shapes come from it).
      sources: canonical key -> (file, key), see `canonical_sources`.
      dtype: parameter dtype (numpy/jnp dtype or name).
      parts: which of 'vision', 'projector', 'llm' to read.
      mesh: place each parameter sharded by `rules` on `mesh` (else on the default device).
      where: a name for error messages (the directory).
    """
    dtype = np.dtype(dtype)
    specs = tensor_specs(config, parts)
    abstract = abstract_params(config)
    validate(specs, abstract, sources, where=where, allow_unused_prefixes=allow_unused_prefixes)
    shardings = param_shardings(config, mesh, rules) if mesh is not None else None
    for spec in specs:
        shape = tuple(_get_in(abstract, spec.path).shape)
        full = _full_param(spec, shape, dtype, sources)
        if shardings is None:
            value = jax.device_put(full)
        else:
            value = jax.make_array_from_callback(shape, _get_in(shardings, spec.path), lambda idx, a=full: a[idx])
        del full
        yield spec.path, value


def read_params(config: LlavaConfig, sources: Mapping[str, tuple[object, str]], **kwargs) -> dict:
    """All parameters of `parts` as a nested dict of `jax.Array`; arguments as `iter_params`."""
    params: dict = {}
    for path, value in iter_params(config, sources, **kwargs):
        _set_in(params, path, value)
    return params


def nest(path: tuple[str, ...], value) -> dict:
    """{path[0]: {path[1]: ... value}}."""
    tree: dict = {}
    _set_in(tree, path, value)
    return tree


# ----------------------------------------------------------------------- export
def _export_index(config: LlavaConfig) -> dict[str, tuple[TensorSpec, int | None]]:
    """HF on-disk key -> (spec, layer index or None)."""
    out = {}
    for spec in tensor_specs(config):
        if spec.layers is None:
            out[hf_save_key(spec.key)] = (spec, None)
        else:
            for i, key in enumerate(spec.keys()):
                out[hf_save_key(key)] = (spec, i)
    return out


def torch_tensor(params, spec: TensorSpec, layer: int | None, dtype=None) -> np.ndarray:
    """The PyTorch-layout numpy tensor of one parameter (one layer of a stacked one)."""
    value = _get_in(params, spec.path)
    if layer is not None:
        value = value[layer]
    arr = spec.to_torch(np.asarray(jax.device_get(value)))
    return np.ascontiguousarray(arr if dtype is None else arr.astype(dtype))


def write_hf_weights(
    params, config: LlavaConfig, directory: str, *, dtype=None, max_shard_bytes: int = MAX_SHARD_BYTES
) -> list[str]:
    """Write safetensors weights in transformers' on-disk LLaVA layout, one tensor in memory at a time.

    Large models are split into `model-0000i-of-0000n.safetensors` with an index.
    Returns the written file names.
    """
    index = _export_index(config)
    shards: list[dict] = [{}]
    size = 0
    for key in sorted(index):
        spec, layer = index[key]
        leaf = _get_in(params, spec.path)
        shape = tuple(leaf.shape[1:] if layer is not None else leaf.shape)
        dt = np.dtype(dtype or leaf.dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = (torch_shape(spec.kind, shape), dt)
        size += nbytes
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for name, shard in zip(names, shards):
        tensors = ((key, torch_tensor(params, *index[key], dtype)) for key in shard)
        write_safetensors(os.path.join(directory, name), tensors, shard)
    if len(shards) > 1:
        total = sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for shard in shards for s, d in shard.values())
        weight_map = {k: n for n, shard in zip(names, shards) for k in shard}
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return names
