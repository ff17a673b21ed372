"""Packing LLaVA JSON + images into ArrayRecord shards (`llava-jax data pack`).

`pack(JSON, IMAGE_ROOT, OUT_DIR)` converts LLaVA's JSON (or JSONL)
plus its image folder into ArrayRecord shards holding each example's
conversation and encoded image bytes (unchanged, no re-encoding), readable by
`llava_jax.data.sources.ArrayRecordSource` / `open_source(OUT_DIR)`. Also
written: `lengths.npy` (grouping keys for modality-grouped batching) and
`metadata.json` (counts, skipped ids and reasons).

Only files under IMAGE_ROOT are read (no absolute paths, no `..` or symbolic
link leading out, unless `--allow-outside-root`), only regular files, and at
most `--max-image-mb` of each (`llava_jax.data.paths`); other examples are
skipped and listed. OUT_DIR must be empty or absent: `--overwrite` replaces
an earlier pack there (never a folder holding anything else). The new pack is
written beside it (`OUT_DIR.partial`) and moved in only when complete, so a
failed run leaves an earlier pack as it was.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import math
import os
import shutil
import time

import numpy as np

from llava_jax.data.encode import DataError
from llava_jax.data.paths import DEFAULT_MAX_IMAGE_BYTES, ImageFileError, read_image_file
from llava_jax.data.sources import JsonSource, serialize_record, word_length

log = logging.getLogger(__name__)

FORMAT = "llava_jax.pack/1"
PACK_FILES = ("lengths.npy", "metadata.json")


class PackError(ValueError):
    """A pack that cannot be written as asked (empty input, an occupied output folder)."""


def _read_image(example: dict, max_bytes: int) -> bytes | None:
    """The example's image bytes; `DataError` when it cannot or may not be read."""
    path = example.get("image")
    if path is None:
        return None
    try:
        return read_image_file(path, max_bytes)
    except ImageFileError as e:
        raise DataError(example.get("id", "?"), e.reason, str(e)) from None


def _load(source: JsonSource, index: int, max_bytes: int) -> tuple[dict, bytes | None]:
    example = source[index]
    if example.get("_error"):
        raise DataError(
            example.get("id", "?"),
            example.get("_reason", "malformed"),
            example["_error"],
        )
    return example, _read_image(example, max_bytes)


def _is_pack_file(name: str) -> bool:
    return name.endswith(".array_record") or name in PACK_FILES


def _prepare_output(out_dir: str, overwrite: bool) -> None:
    """Refuse an occupied `out_dir` unless `overwrite` and it holds only a pack (nothing else is deleted)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise PackError(f"{out_dir} exists and is not a folder")
    names = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    if not names:
        return
    if not overwrite:
        raise PackError(
            f"{out_dir} is not empty ({len(names)} entries, e.g. {names[0]!r}); pass --overwrite to replace "
            f"the pack there, or choose an empty folder"
        )
    foreign = [n for n in names if not _is_pack_file(n)]
    if foreign:
        raise PackError(
            f"{out_dir} holds files that are not part of a pack ({foreign[:3]}); --overwrite only replaces a "
            f"pack, so nothing was deleted: choose another folder"
        )


def _install(staging: str, out_dir: str) -> None:
    """Replace the pack in `out_dir` (if any) with the complete one in `staging`."""
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):
        if _is_pack_file(name):
            os.remove(os.path.join(out_dir, name))
    for name in os.listdir(staging):
        os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    os.rmdir(staging)


def pack(
    json_path: str,
    image_root: str,
    out_dir: str,
    *,
    shard_size: int = 5000,
    on_error: str = "skip",
    workers: int = 8,
    verbose: bool = True,
    overwrite: bool = False,
    allow_outside_root: bool = False,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> dict:
    """Writes the ArrayRecord pack of a LLaVA JSON dataset; returns the summary written to metadata.json.

    Examples whose record cannot be decoded or whose image file cannot (or may
    not, see the module docstring) be read are skipped and listed (or, with
    `on_error="strict"`, stop the run). Other checks (conversation structure,
    image decodability) happen in the pipeline, which counts them per run.
    Raises `PackError` for an empty input, an input of which nothing could be
    packed, or an occupied `out_dir` (see the module docstring).
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    if shard_size < 1 or workers < 1 or max_image_bytes < 1:
        raise PackError(
            f"shard_size, workers and max_image_bytes must be >= 1, got {shard_size}, {workers}, {max_image_bytes}"
        )
    source = JsonSource(json_path, image_root, allow_outside_root=allow_outside_root)
    total = len(source)
    if total == 0:
        raise PackError(f"{json_path} holds no examples (an empty file or an empty list): nothing to pack")
    if not os.path.isdir(image_root):
        raise PackError(f"image root {image_root} is not a folder")
    out_dir = os.path.abspath(out_dir)
    _prepare_output(out_dir, overwrite)
    staging = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)  # an earlier run's leftovers, never a complete pack
    os.makedirs(staging)
    num_shards = max(1, math.ceil(total / shard_size))
    skipped: collections.Counter = collections.Counter()
    skipped_ids: list[list[str]] = []
    lengths: list[int] = []
    written = 0
    start = time.time()
    writer = None
    shard = -1
    chunk = max(64, 16 * workers)
    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            for begin in range(0, total, chunk):
                # Reading files is I/O bound: threads overlap it; order is preserved.
                futures = [
                    pool.submit(_load, source, i, max_image_bytes) for i in range(begin, min(total, begin + chunk))
                ]
                for index, future in zip(range(begin, total), futures):
                    try:
                        example, image_bytes = future.result()
                    except DataError as error:
                        if on_error == "strict":
                            raise
                        log.warning("pack: skipping %s", error)
                        skipped[error.reason] += 1
                        skipped_ids.append([error.sample_id, error.reason])
                        continue
                    if index // shard_size != shard:
                        if writer is not None:
                            writer.close()
                        shard = index // shard_size
                        name = f"data-{shard:05d}-of-{num_shards:05d}.array_record"
                        # group_size:1 keeps every record individually seekable (random access).
                        writer = ArrayRecordWriter(os.path.join(staging, name), "group_size:1")
                    writer.write(serialize_record(example, image_bytes))
                    lengths.append(word_length(example))
                    written += 1
                if verbose and (begin // chunk) % 50 == 0:
                    print(f"pack: {min(total, begin + chunk)}/{total} examples", flush=True)
        if writer is not None:
            writer.close()
            writer = None
    except BaseException:
        if writer is not None:
            writer.close()
        shutil.rmtree(staging, ignore_errors=True)  # an earlier pack in out_dir stays as it was
        raise
    if written == 0:
        shutil.rmtree(staging, ignore_errors=True)
        examples = ", ".join(f"{i} ({r})" for i, r in skipped_ids[:3])
        raise PackError(
            f"no example of {json_path} could be packed: all {total} skipped {dict(skipped)}, e.g. {examples}; "
            f"is {image_root} the right image root?"
        )
    np.save(os.path.join(staging, "lengths.npy"), np.asarray(lengths, np.int32))
    summary = {
        "format": FORMAT,
        "source": os.path.abspath(json_path),
        "image_root": os.path.abspath(image_root),
        "num_examples": written,
        "num_input": total,
        "skipped": dict(skipped),
        "skipped_ids": skipped_ids,
        "seconds": round(time.time() - start, 2),
    }
    with open(os.path.join(staging, "metadata.json"), "w") as f:
        json.dump(summary, f, indent=1)
    _install(staging, out_dir)
    return summary
