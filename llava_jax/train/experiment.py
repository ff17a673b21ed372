"""Experiment configs: Python files exposing `get_config()` with command-line overrides.

`load_config("configs/tiny.py:finetune", ["--config.optim.lr=1e-4"])` loads the
file and calls `get_config("finetune")` through `ml_collections.config_flags`
(`DEFINE_config_file`), then applies the overrides with `DEFINE_config_dict`,
each on a private `absl.flags.FlagValues` so the process's own flags are never
touched. Overrides take config_flags' syntax: the field's type parses the text
(`--config.batch_size=64`, `--config.model.freeze_vision=false`), tuples and
lists take a Python literal or one bare element (`--config.trainable=^projector/`).

Two things config_flags does not do are done here: list-valued fields (e.g.
`trainable`, which it refuses to override) are parsed as tuples on a copy and
set back as lists, and an unknown field is a `ConfigError` naming its full dotted name.
A field whose default is None has no type to parse with; declare it
`ml_collections.config_dict.placeholder(T)`.
"""

from __future__ import annotations

import copy
import os
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from llava_jax.config import ConfigError

_PREFIX = "--config."
# config_flags loads every config file as this module; a stale one would lend its names to the next file.
_MODULE = "config_config"


def _field(item: str) -> str:
    if not item.startswith(_PREFIX):
        raise ValueError(f"override {item!r} must look like --config.field=value")
    return item[len(_PREFIX) :].partition("=")[0]


def _lists(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Dotted paths of the list-valued fields of `config`."""
    out = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out += _lists(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            out.append(prefix + key)
    return out


def _as_tuples(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose list fields are tuples, which config_flags can parse (lists it refuses)."""
    shadow = copy.deepcopy(config)
    for path in _lists(shadow):
        holder, _, name = path.rpartition(".")
        node = config_path.get_value(holder, shadow) if holder else shadow
        with node.unlocked():
            value = tuple(node[name])
            del node[name]  # assigning a tuple to a list field would be cast back to a list
            node[name] = value
    return shadow


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Apply `--config.a.b=value` strings to `config` (in place, field order and lock kept) and return it."""
    overrides = list(overrides)
    if not overrides:
        return config
    for item in overrides:
        field = _field(item)
        try:
            config_path.get_value(field, config)
        except (KeyError, AttributeError, IndexError):
            raise ConfigError(f"unknown config field {field!r}") from None
    argv = ["prog", *overrides]
    values = flags.FlagValues()
    try:
        config_flags.DEFINE_config_dict(
            "config", _as_tuples(config), flag_values=values, lock_config=False, sys_argv=argv
        )
        values(argv)
    except flags.Error as e:  # names the flag, e.g. "flag --config.batch_size=abc: invalid literal for int()"
        raise ValueError(str(e)) from None
    # Parsed on the copy, set on `config`: a tuple assigned to a list field becomes a list again.
    for path, value in values["config"].override_values.items():
        holder, _, name = path.rpartition(".")
        node = config_path.get_value(holder, config) if holder else config
        with node.unlocked():
            node[name] = value
    return config


def load_config(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Load `path.py[:arg]` (its `get_config([arg])`) and apply `--config.x=y` overrides."""
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    argv = ["prog", f"--config={spec}"]
    values = flags.FlagValues()
    sys.modules.pop(_MODULE, None)
    try:
        config_flags.DEFINE_config_file("config", flag_values=values, lock_config=False, sys_argv=argv)
        values(argv)
        config = values.config
    except Exception as e:
        module = sys.modules.get(_MODULE)
        if module is not None and not hasattr(module, "get_config"):
            raise AttributeError(f"{path} defines no get_config()") from None
        if isinstance(e, flags.Error):  # e.g. get_config raised: the message holds its traceback
            raise ValueError(f"{spec}: {e}") from None
        raise
    finally:
        sys.modules.pop(_MODULE, None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise TypeError(f"{spec}: get_config() returned {type(config).__name__}, not a ConfigDict")
    return apply_overrides(config, list(overrides))
