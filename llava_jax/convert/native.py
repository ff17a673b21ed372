"""The llava_jax checkpoint directory: `config.json` + orbax `params/` + tokenizer files.

Parameters are written with orbax's partial saves, one parameter (or one
group) at a time, so converting a checkpoint never holds the whole model in
host memory: peak memory stays near the largest parameter.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable

import jax
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp

from llava_jax.config import LlavaConfig
from llava_jax.convert.tensors import CheckpointError
from llava_jax.data.sentencepiece_tokens import save_tokenizer
from llava_jax.model.params import abstract_params, param_shardings
from llava_jax.sharding import DEFAULT_RULES, Rules

PARAMS_DIR = "params"


def is_native(directory: str) -> bool:
    """True when `directory` holds a llava_jax checkpoint.

    A `config.json` of the llava_jax format without its `params/` folder is a
    `CheckpointError` (an incomplete copy or an interrupted save), not another format.
    """
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            native = json.load(f).get("format") == "llava_jax"
    except (ValueError, AttributeError, RecursionError):  # not JSON, or not an object: not ours to judge
        return False
    if native and not os.path.isdir(os.path.join(directory, PARAMS_DIR)):
        raise CheckpointError(
            f"{directory}: a llava_jax checkpoint (config.json) without its {PARAMS_DIR}/ folder: an incomplete "
            f"copy, or a save that did not finish; copy or write the checkpoint again"
        )
    return native


def _leaves_with_paths(params) -> Iterable[tuple[tuple[str, ...], jax.Array]]:
    for keypath, leaf in jax.tree_util.tree_leaves_with_path(params):
        yield tuple(k.key for k in keypath), leaf


def save_native(directory: str, params, config: LlavaConfig, tokenizer=None) -> None:
    """Write a llava_jax checkpoint; `params` is a tree or an iterable of (path, array) pairs.

    An iterable is consumed lazily (each array saved, then dropped), which keeps
    conversion memory near one parameter. The directory appears only complete:
    everything is written under `DIR.partial` and renamed at the end.
    """
    directory = os.path.abspath(directory)
    if os.path.exists(os.path.join(directory, PARAMS_DIR)):
        raise CheckpointError(f"{directory}: already holds a checkpoint ({PARAMS_DIR}/ exists)")
    staging = directory.rstrip("/") + ".partial"
    # Several processes (multi-host training) write one directory: orbax's partial saves are
    # collective; the rest is done once, by process 0, between barriers.
    primary = jax.process_index() == 0
    if primary:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
    _sync_processes("llava_jax_save_native_start")
    target = os.path.join(staging, PARAMS_DIR)
    pairs = _leaves_with_paths(params) if isinstance(params, dict) else params
    for path, value in pairs:
        tree: dict = {}
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        ocp.partial.save(target, tree)
        del value, tree, node
    ocp.partial.finalize(target)
    if primary:
        config.save(staging)
        if tokenizer is not None:
            save_tokenizer(tokenizer, staging)
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
        os.rmdir(staging)
    _sync_processes("llava_jax_save_native_done")


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def load_native(directory: str, *, dtype=None, mesh=None, rules: Rules = DEFAULT_RULES):
    """(config, params) from a llava_jax checkpoint; params cast to `dtype`, sharded on `mesh` if given."""
    directory = os.path.abspath(directory)
    with open(os.path.join(directory, "config.json")) as f:
        config = LlavaConfig.from_dict(json.load(f))
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
        params = ocp.load(os.path.join(directory, PARAMS_DIR), target)
    except Exception as e:  # tensorstore reports truncated array files as a bare Exception, metadata as ValueError
        detail = " ".join(str(e).split())
        raise CheckpointError(
            f"{directory}: {PARAMS_DIR}/ cannot be read as config.json describes it (truncated or corrupt files, "
            f"or the parameters of another config): {type(e).__name__}: {detail[:300]}"
        ) from e
    return config, params
