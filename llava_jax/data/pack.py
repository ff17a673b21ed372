"""Packing LLaVA JSON + images into ArrayRecord shards (`llava-jax data pack`).

`pack(JSON, IMAGE_ROOT, OUT_DIR)` converts LLaVA's JSON (or JSONL)
plus its image folder into ArrayRecord shards holding each example's
conversation and encoded image bytes (unchanged, no re-encoding), readable by
`llava_jax.data.sources.ArrayRecordSource` / `open_source(OUT_DIR)`. Also
written: `lengths.npy` (grouping keys for modality-grouped batching) and
`metadata.json` (counts, skipped ids and reasons).
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import math
import os
import time

import numpy as np

from llava_jax.data.encode import DataError
from llava_jax.data.sources import JsonSource, serialize_record, word_length

log = logging.getLogger(__name__)

FORMAT = "llava_jax.pack/1"


def _read_image(example: dict) -> bytes | None:
    """The example's image bytes; `DataError` when it cannot be read."""
    path = example.get("image")
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataError(example.get("id", "?"), "missing_image", f"{path}: {e.strerror}") from None


def _load(source: JsonSource, index: int) -> tuple[dict, bytes | None]:
    example = source[index]
    if example.get("_error"):
        raise DataError(
            example.get("id", "?"),
            example.get("_reason", "malformed"),
            example["_error"],
        )
    return example, _read_image(example)


def pack(
    json_path: str,
    image_root: str,
    out_dir: str,
    *,
    shard_size: int = 5000,
    on_error: str = "skip",
    workers: int = 8,
    verbose: bool = True,
) -> dict:
    """Writes the ArrayRecord pack of a LLaVA JSON dataset; returns the summary written to metadata.json.

    Examples whose record cannot be decoded or whose image file cannot be read
    are skipped and listed (or, with `on_error="strict"`, stop the run). Other
    checks (conversation structure, image decodability) happen in the pipeline,
    which counts them per run.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    source = JsonSource(json_path, image_root)
    os.makedirs(out_dir, exist_ok=True)
    total = len(source)
    num_shards = max(1, math.ceil(total / shard_size))
    skipped: collections.Counter = collections.Counter()
    skipped_ids: list[list[str]] = []
    lengths: list[int] = []
    written = 0
    start = time.time()
    writer = None
    shard = -1
    chunk = max(64, 16 * workers)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for begin in range(0, total, chunk):
            # Reading files is I/O bound: threads overlap it; order is preserved.
            futures = [pool.submit(_load, source, i) for i in range(begin, min(total, begin + chunk))]
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
                    writer = ArrayRecordWriter(os.path.join(out_dir, name), "group_size:1")
                writer.write(serialize_record(example, image_bytes))
                lengths.append(word_length(example))
                written += 1
            if verbose and (begin // chunk) % 50 == 0:
                print(f"pack: {min(total, begin + chunk)}/{total} examples", flush=True)
    if writer is not None:
        writer.close()
    np.save(os.path.join(out_dir, "lengths.npy"), np.asarray(lengths, np.int32))
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
    with open(os.path.join(out_dir, "metadata.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
