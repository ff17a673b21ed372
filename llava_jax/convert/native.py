"""The llava_jax checkpoint directory: `config.json` + orbax `params/` + tokenizer files."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from llava_jax.config import LlavaConfig
from llava_jax.convert.tensors import CheckpointError
from llava_jax.model.params import abstract_params, param_shardings
from llava_jax.sharding import DEFAULT_RULES, Rules

PARAMS_DIR = "params"


def is_native(directory: str) -> bool:
    """True when `directory` holds a llava_jax checkpoint."""
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path) or not os.path.isdir(os.path.join(directory, PARAMS_DIR)):
        return False
    with open(path) as f:
        return json.load(f).get("format") == "llava_jax"


def save_native(directory: str, params, config: LlavaConfig, tokenizer=None) -> None:
    """Write params (orbax), `config.json` and, when given, the tokenizer files into `directory`."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, PARAMS_DIR)
    if os.path.exists(target):
        raise CheckpointError(f"{directory}: already holds a checkpoint ({PARAMS_DIR}/ exists)")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target, params)
        ckptr.wait_until_finished()
    config.save(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


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
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(os.path.join(directory, PARAMS_DIR), target)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise CheckpointError(f"{directory}: params do not match config.json ({e})") from e
    return config, params
