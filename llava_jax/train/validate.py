"""Checks of an experiment config before anything is loaded or written: every impossible value named by key.

`validate_config(cfg)` raises one `ConfigError` listing every field at fault
(`num_steps=-5 must be >= 0 (0: one pass over the data)`) so that a refused
run leaves its workdir untouched: no `experiment.json`, no checkpoint, no
`final/`. It is called first by `llava_jax.train.loop.run`. `check_source`
refuses a dataset with no example at all, or one whose sampled image files
are all unreadable (before the model is built).

Where a value has a documented meaning it keeps it: `num_steps=0` is one pass
over the data (`data.num_epochs`), `data.num_epochs=0` repeats the data
(the run length is then `num_steps`), `data.pack_length=0` is `max_length`,
`mesh.num_devices=0` is all devices, `optim.clip_norm=0` turns clipping off
and `guard.spike_factor=0` turns the loss-spike guard off.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable

import ml_collections
import numpy as np

from llava_jax.config import ConfigError
from llava_jax.convert.storage import ATOMICITY_MODES
from llava_jax.data.conversation import TEMPLATES
from llava_jax.data.paths import DEFAULT_MAX_IMAGE_BYTES, ImageFileError, check_image_file
from llava_jax.data.sources import JsonSource

_MISSING = object()
INIT_KINDS = ("random", "llava", "components")
DTYPES = ("float32", "bfloat16", "float16")


def _get(cfg: ml_collections.ConfigDict, key: str):
    node = cfg
    for part in key.split("."):
        if not hasattr(node, "get"):
            return _MISSING
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# (key, test, what the value must be). Keys absent from a config (an older file) are not checked.
_RULES: tuple[tuple[str, Callable, str], ...] = (
    ("stage", lambda v: v in (1, 2), "1 or 2"),
    ("seed", _int, "an integer"),
    ("init.kind", lambda v: v in INIT_KINDS, f"one of {', '.join(INIT_KINDS)}"),
    ("batch_size", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("micro_batches", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("num_steps", lambda v: _int(v) and v >= 0, "an integer >= 0 (0: one pass over the data, data.num_epochs)"),
    ("log_every", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("loss_chunk", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("peak_tflops", lambda v: _number(v) and v >= 0, "a number >= 0 (0: the known peak of the device)"),
    ("model.dtype", lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
    ("model.frozen_dtype", lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
    ("checkpoint.every_steps", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("checkpoint.keep", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("checkpoint.atomicity", lambda v: v in ATOMICITY_MODES, f"one of {', '.join(ATOMICITY_MODES)}"),
    ("optim.lr", lambda v: _number(v) and v > 0, "a finite number > 0"),
    ("optim.b1", lambda v: _number(v) and 0 <= v < 1, "in [0, 1)"),
    ("optim.b2", lambda v: _number(v) and 0 <= v < 1, "in [0, 1)"),
    ("optim.eps", lambda v: _number(v) and v > 0, "a number > 0"),
    ("optim.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("optim.warmup_ratio", lambda v: _number(v) and 0 <= v <= 1, "in [0, 1]"),
    ("optim.clip_norm", lambda v: _number(v) and v >= 0, "a number >= 0 (0: no clipping)"),
    ("lora.rank", lambda v: _int(v) and v >= 0, "an integer >= 0 (0: no LoRA)"),
    ("lora.alpha", lambda v: _number(v) and v > 0, "a number > 0"),
    ("lora.dropout", lambda v: _number(v) and 0 <= v < 1, "in [0, 1)"),
    ("lora.projector_lr", lambda v: _number(v) and v > 0, "a number > 0"),
    ("mesh.num_devices", lambda v: _int(v) and v >= 0, "an integer >= 0 (0: all devices)"),
    ("mesh.data", lambda v: _int(v) and (v >= 1 or v == -1), "an integer >= 1, or -1 (the rest)"),
    ("mesh.fsdp", lambda v: _int(v) and (v >= 1 or v == -1), "an integer >= 1, or -1 (the rest)"),
    ("mesh.tensor", lambda v: _int(v) and (v >= 1 or v == -1), "an integer >= 1, or -1 (the rest)"),
    ("mesh.dcn_data", lambda v: _int(v) and v >= 0, "an integer >= 0 (0: the number of slices)"),
    ("mesh.dcn_fsdp", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("data.template", lambda v: v in TEMPLATES, f"one of {', '.join(TEMPLATES)}"),
    ("data.image_mode", lambda v: v in ("pad", "square", "anyres"), "'pad', 'square' or 'anyres'"),
    ("data.batching", lambda v: v in ("pack", "pad"), "'pack' or 'pad'"),
    ("data.on_error", lambda v: v in ("skip", "strict"), "'skip' or 'strict'"),
    ("data.max_length", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("data.max_images_per_row", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("data.pack_length", lambda v: _int(v) and v >= 0, "an integer >= 0 (0: data.max_length)"),
    ("data.pack_window", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("data.pad_multiple", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("data.group_factor", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("data.num_epochs", lambda v: _int(v) and v >= 0, "an integer >= 0 (0: repeat the data)"),
    ("data.num_workers", lambda v: _int(v) and v >= 0, "an integer >= 0"),
    ("data.read_threads", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("data.read_buffer", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("data.max_image_mb", lambda v: _number(v) and v > 0, "a number > 0"),
    ("data.max_skip_fraction", lambda v: _number(v) and 0 <= v <= 1, "in [0, 1] (1: never stop for skips)"),
    ("data.skip_check_after", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("guard.spike_factor", lambda v: _number(v) and (v == 0 or v > 1), "0 (off) or a number > 1"),
    ("guard.spike_steps", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("guard.spike_window", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("guard.spike_min_delta", lambda v: _number(v) and v >= 0, "a number >= 0"),
)


def _relations(cfg) -> list[str]:
    """Checks between fields (each only when its fields passed their own rule)."""
    problems = []
    batch, micro = _get(cfg, "batch_size"), _get(cfg, "micro_batches")
    if _int(batch) and _int(micro) and batch >= 1 and micro >= 1 and batch % micro:
        problems.append(f"batch_size={batch} does not split into micro_batches={micro}")
    pack, max_length = _get(cfg, "data.pack_length"), _get(cfg, "data.max_length")
    if _int(pack) and _int(max_length) and 0 < pack < max_length:
        problems.append(f"data.pack_length={pack} must be 0 or >= data.max_length={max_length} (a sample must fit)")
    trainable = _get(cfg, "trainable")
    if trainable is not _MISSING:
        if isinstance(trainable, str) or not trainable:
            problems.append(f"trainable={trainable!r} must be a non-empty list of path regexes")
        else:
            for pattern in trainable:
                try:
                    re.compile(pattern)
                except (re.error, TypeError) as e:
                    problems.append(f"trainable pattern {pattern!r} is not a regex ({e})")
    return problems


def _paths(cfg) -> list[str]:
    problems = []
    json_path, image_root = _get(cfg, "data.json"), _get(cfg, "data.image_root")
    if json_path is _MISSING:
        return problems
    if not json_path:
        problems.append("data.json is not set (a LLaVA .json / .jsonl file or a `llava-jax data pack` folder)")
    elif not os.path.exists(json_path):
        problems.append(f"data.json={json_path!r} does not exist")
    if image_root and image_root is not _MISSING and not os.path.isdir(image_root):
        problems.append(f"data.image_root={image_root!r} is not a folder")
    return problems


def validate_config(cfg: ml_collections.ConfigDict, *, paths: bool = True) -> None:
    """`ConfigError` naming every impossible value of `cfg` (module docstring); with `paths`, the data files too."""
    problems = []
    for key, test, wanted in _RULES:
        value = _get(cfg, key)
        if value is _MISSING:
            continue
        try:
            ok = bool(test(value))
        except TypeError:
            ok = False
        if not ok:
            problems.append(f"{key}={value!r} must be {wanted}")
    problems += _relations(cfg)
    if paths:
        problems += _paths(cfg)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def check_source(cfg: ml_collections.ConfigDict, source, *, sample: int = 64, min_images: int = 8) -> None:
    """`ConfigError` when the training data holds no example, or when no image it names can be read.

    The second check reads `sample` examples spread over a JSON source and stats their image files:
    when at least `min_images` were looked at and none is readable (a wrong `data.image_root`, say),
    the run stops before the model is even built. Fewer failures are left to the skip guard.
    """
    if len(source) == 0:
        raise ConfigError(
            f"data.json={cfg.data.json!r} holds no examples (an empty file or an empty list): nothing to train on"
        )
    if not isinstance(source, JsonSource):
        return  # packed records carry their image bytes
    max_bytes = int(cfg.data.get("max_image_mb", DEFAULT_MAX_IMAGE_BYTES / 2**20) * 2**20)
    failures, looked = [], 0
    for index in sorted(set(np.linspace(0, len(source) - 1, min(sample, len(source))).astype(int).tolist())):
        example = source[index]
        reason = example.get("_reason")
        if reason == "image_outside_root":
            looked += 1
            failures.append(f"{example.get('id')}: {example.get('_error')}")
            continue
        if reason:
            continue  # a broken record, not an image: the skip guard's business
        path = example.get("image")
        if not isinstance(path, str):
            continue
        looked += 1
        try:
            check_image_file(path, max_bytes)
        except ImageFileError as e:
            failures.append(f"{example.get('id')}: {e}")
    if looked >= min_images and len(failures) >= looked:
        raise ConfigError(
            f"none of the {looked} image files sampled from data.json={cfg.data.json!r} can be read "
            f"(e.g. {failures[0]}): is data.image_root={cfg.data.image_root!r} right?"
        )
