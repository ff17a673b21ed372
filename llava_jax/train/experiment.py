"""Experiment configs: Python files exposing `get_config()` with command-line overrides.

`load_config("configs/tiny.py:finetune", ["--config.optim.lr=1e-4"])` imports
the file, calls `get_config("finetune")` and applies each override with the
type of the field it replaces. Unknown fields are an error.
"""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections


def _parse_value(text: str, current):
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, str) or current is None:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        return value if current is None else (text if not isinstance(value, str) else value)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"expected {type(current).__name__}, got {text!r}") from None
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(current)(value)
    if not isinstance(value, type(current)):
        raise ValueError(f"expected {type(current).__name__}, got {text!r}")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Apply `--config.a.b=value` strings to `config` (in place) and return it."""
    for item in overrides:
        if not item.startswith("--config."):
            raise ValueError(f"override {item!r} must look like --config.field=value")
        key, sep, text = item[len("--config.") :].partition("=")
        if not sep:
            raise ValueError(f"override {item!r} has no '='")
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node:
                raise KeyError(f"unknown config field {key!r} (no {part!r})")
            node = node[part]
        if parts[-1] not in node:
            raise KeyError(f"unknown config field {key!r}")
        with node.unlocked() if hasattr(node, "unlocked") else _null():
            node[parts[-1]] = _parse_value(text, node[parts[-1]])
    return config


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def load_config(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Import `path.py[:arg]`, call `get_config([arg])`, apply overrides."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"llava_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"{path} defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    return apply_overrides(config, list(overrides))
