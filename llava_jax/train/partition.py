"""Splitting parameter trees by path regexes: trainable vs frozen, and per-part labels.

Paths are '/'-joined keys, e.g. `llm/layers/self_attn/q_proj/kernel`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax


def path_str(keypath) -> str:
    """'/'-joined key names of a `jax.tree_util` key path."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in keypath)


def leaf_paths(tree) -> list[str]:
    """Paths of all leaves, in tree order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _select(tree, keep, prefix=""):
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            sub = _select(value, keep, path + "/")
            if sub:
                out[key] = sub
        elif keep(path):
            out[key] = value
    return out


def split(params: dict, trainable: Sequence[str]) -> tuple[dict, dict]:
    """(trainable, frozen) subtrees; a leaf is trainable when any regex in `trainable` matches its path.

    Raises ValueError when a pattern matches nothing (a typo would otherwise freeze everything).
    """
    patterns = [re.compile(p) for p in trainable]
    paths = leaf_paths(params)
    for p in patterns:
        if not any(p.search(path) for path in paths):
            raise ValueError(f"trainable pattern {p.pattern!r} matches no parameter (e.g. {paths[:3]})")
    is_trainable = lambda path: any(p.search(path) for p in patterns)
    return _select(params, is_trainable), _select(params, lambda path: not is_trainable(path))


def label_tree(tree, rules: Sequence[tuple[str, str]], default: str):
    """Tree of labels: the label of the first (regex, label) rule matching each leaf's path."""
    compiled = [(re.compile(r), label) for r, label in rules]

    def label(keypath, _):
        path = path_str(keypath)
        return next((lab for r, lab in compiled if r.search(path)), default)

    return jax.tree_util.tree_map_with_path(label, tree)
