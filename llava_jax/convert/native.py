"""The llava_jax checkpoint directory: `config.json` + orbax `params/` + tokenizer files.

`config.json` (with `"format": "llava_jax"`) is what makes a directory a llava_jax
checkpoint, and it is written last: a directory whose save did not finish is never
taken for a checkpoint. How the rest appears depends on the storage
(`llava_jax.convert.storage`):

- `rename` (local disks, NFS): everything is written under `DIR.partial` and moved
  in at the end. Parameters are written with orbax's partial saves, one parameter
  (or group) at a time, so converting a checkpoint never holds the whole model in
  host memory: peak memory stays near the largest parameter.
- `commit_file` (`gs://` URLs, FUSE-mounted buckets, which cannot rename
  directories): written in place, parameters in one orbax save (an iterable of
  parameters is gathered first: host memory then holds the whole model), tokenizer
  files copied in, `config.json` last. Nothing is renamed but that one file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable

import jax
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp
from etils import epath

from llava_jax.config import LlavaConfig
from llava_jax.convert import storage
from llava_jax.convert.tensors import CheckpointError
from llava_jax.data.sentencepiece_tokens import save_tokenizer
from llava_jax.model.params import abstract_params, param_shardings
from llava_jax.sharding import DEFAULT_RULES, Rules

PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
log = logging.getLogger(__name__)


def is_native(directory: str) -> bool:
    """True when `directory` (a path or a `gs://` URL) holds a llava_jax checkpoint.

    A `config.json` of the llava_jax format without its `params/` folder is a
    `CheckpointError` (an incomplete copy), not another format.
    """
    path = storage.as_path(directory) / CONFIG_FILE
    if not path.exists():
        return False
    try:
        native = json.loads(path.read_text()).get("format") == "llava_jax"
    except (ValueError, AttributeError, RecursionError):  # not JSON, or not an object: not ours to judge
        return False
    if native and not (path.parent / PARAMS_DIR).is_dir():
        raise CheckpointError(
            f"{directory}: a llava_jax checkpoint (config.json) without its {PARAMS_DIR}/ folder: an incomplete "
            f"copy, or a save that did not finish; copy or write the checkpoint again"
        )
    return native


def _nest(pairs: Iterable[tuple[tuple[str, ...], jax.Array]], tree: dict | None = None) -> dict:
    tree = {} if tree is None else tree
    for path, value in pairs:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def save_native(directory: str, params, config: LlavaConfig, tokenizer=None, *, atomicity: str = "auto") -> None:
    """Write a llava_jax checkpoint; `params` is a tree or an iterable of (path, array) pairs.

    `directory` is a filesystem path or a `gs://` URL; `atomicity` is `auto`, `rename` or
    `commit_file` (module docstring). With `rename` an iterable is consumed lazily (each
    array saved, then dropped), which keeps conversion memory near one parameter. The
    directory is a checkpoint only once complete; the remains of an interrupted save
    (parameters without `config.json`) are replaced.
    """
    path = storage.as_path(directory)
    mode = storage.resolve_atomicity(atomicity, path)
    if (path / CONFIG_FILE).exists() and (path / PARAMS_DIR).exists():
        raise CheckpointError(f"{path}: already holds a checkpoint ({PARAMS_DIR}/ exists)")
    # Several processes (multi-host training) write one directory: orbax's saves are
    # collective; the rest is done once, by process 0, between barriers.
    primary = jax.process_index() == 0
    if mode == "rename":
        _save_staged(os.fspath(path), params, config, tokenizer, primary)
    else:
        _save_in_place(path, params, config, tokenizer, primary)


def _save_staged(directory: str, params, config: LlavaConfig, tokenizer, primary: bool) -> None:
    staging = directory.rstrip("/") + ".partial"
    if primary:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
    _sync_processes("llava_jax_save_native_start")
    target = os.path.join(staging, PARAMS_DIR)
    if isinstance(params, dict):  # already in memory: one collective save, not one per parameter
        ocp.partial.save(target, params)
    else:
        for path, value in params:
            tree = _nest([(path, value)])
            ocp.partial.save(target, tree)
            del value, tree
    ocp.partial.finalize(target)
    if primary:
        if tokenizer is not None:
            save_tokenizer(tokenizer, staging)
        _write_config(epath.Path(staging), config)
        os.makedirs(directory, exist_ok=True)
        stale = os.path.join(directory, PARAMS_DIR)
        if os.path.exists(stale):  # an earlier save stopped between moving params/ and config.json
            shutil.rmtree(stale)
        # config.json last: until it is in, the directory is not a checkpoint.
        names = sorted(os.listdir(staging), key=lambda name: name == CONFIG_FILE)
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
        os.rmdir(staging)
    _sync_processes("llava_jax_save_native_done")


def _save_in_place(path: epath.Path, params, config: LlavaConfig, tokenizer, primary: bool) -> None:
    if primary:
        if (path / PARAMS_DIR).exists():
            log.warning("%s: replacing the %s/ of a save that did not finish", path, PARAMS_DIR)
            (path / PARAMS_DIR).rmtree()
        path.mkdir(parents=True, exist_ok=True)
    _sync_processes("llava_jax_save_native_start")
    if not isinstance(params, dict):
        log.warning("%s: gathering every parameter in host memory (commit_file saves the tree at once)", path)
        params = _nest(params)
    context = ocp.Context()
    context.atomicity.mode = ocp.options.AtomicityMode.COMMIT_FILE
    with context:
        ocp.save(path / PARAMS_DIR, params)
    if primary:
        if tokenizer is not None:
            with tempfile.TemporaryDirectory() as local:
                save_tokenizer(tokenizer, local)
                for name in sorted(os.listdir(local)):
                    (path / name).write_bytes(epath.Path(local, name).read_bytes())
        _write_config(path, config)
    _sync_processes("llava_jax_save_native_done")


def _write_config(path: epath.Path, config: LlavaConfig) -> None:
    """`config.json`, whole or not at all: one object write on a bucket, a file rename on a filesystem."""
    text = json.dumps(config.to_dict(), indent=2)
    if storage.is_remote(path):
        (path / CONFIG_FILE).write_text(text)
        return
    tmp = os.path.join(os.fspath(path), CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(os.fspath(path), CONFIG_FILE))


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def load_native(directory: str, *, dtype=None, mesh=None, rules: Rules = DEFAULT_RULES):
    """(config, params) from a llava_jax checkpoint; params cast to `dtype`, sharded on `mesh` if given."""
    path = storage.as_path(directory)
    config = LlavaConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
    if dtype is not None:
        config = config.with_dtype(str(np.dtype(dtype)))
    abstract = abstract_params(config)
    if mesh is not None:
        shardings = param_shardings(config, mesh, rules)
    else:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    try:
        params = ocp.load(path / PARAMS_DIR, target)
    except Exception as e:  # tensorstore reports truncated array files as a bare Exception, metadata as ValueError
        detail = " ".join(str(e).split())
        raise CheckpointError(
            f"{path}: {PARAMS_DIR}/ cannot be read as config.json describes it (truncated or corrupt files, "
            f"or the parameters of another config): {type(e).__name__}: {detail[:300]}"
        ) from e
    return config, params
