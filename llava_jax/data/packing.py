"""Rows of encoded samples: packing, padding, modality-grouped order, image decoding.

A *row* is one sequence of the batch, as numpy: `input_ids`, `labels`,
`positions`, `segment_ids` (all int32[T]; segment 0 = padding, 1.. = the
samples of the row, positions restarting at 0 per sample) and a scalar
`skipped` count. Until its images are decoded it also carries host-only
metadata under `_`-prefixed keys: the image references in order of
appearance, the segment each image belongs to, the sample ids, and the
`(id, reason)` of samples dropped on the way.

Packing (`PackIterDataset`) reads a window of encoded samples, places them
best-fit-decreasing into rows of `max_length` tokens and `max_images` images,
and emits the rows in a seeded random order. Its checkpoint state is the
parent's state at the window start plus rows already emitted: restoring
re-reads and re-packs the window (deterministic) and skips those rows.

Why not grain's `BestFitPackIterDataset` (grain 0.2.18, tried for issue #16):
it expresses everything LLaVA needs (the image cap as a packed feature of one
slot per image, image references and ids as per-row meta features, skips as
zero-token entries, exact checkpoints), but it packs online in arrival order
and emits all its rows as soon as one sample fits none of them, so rows opened
late leave gaps; it cannot sort a window first (sorting before it flushes at
every window start and is worse). Measured against this packer on the same
samples: the demo's stage-2 rows (256 tokens, ~108-token samples) 92.6% non-pad
with 256 rows in flight vs 96.5% here, and ~15% more CPU per row on the demo's
data path (which shares the 2 cores with training in a demo sized to 15 min);
LLaVA-1.5 stage-2 rows of 4096: 94.5% vs 94.8%; stage-1 rows of 2400: 98.7% vs
97.3% (bench/data.py's modelled mixes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from llava_jax.data.encode import IGNORE_INDEX, DataError, is_skip
from llava_jax.data.image import image_hw, normalize, prepare_pixels

log = logging.getLogger(__name__)

ROW_KEYS = ("input_ids", "labels", "positions", "segment_ids")


def plan_rows(lengths: Sequence[int], images: Sequence[int], capacity: int, max_images: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing of samples into rows.

    Args:
      lengths: tokens per sample (each <= capacity).
      images: images per sample.
      capacity: tokens per row (`max_length`).
      max_images: images per row.
    Returns:
      Rows as lists of sample indices, each row in placement order (longest first).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    used_images: list[int] = []
    for i in order:
        best, best_free = -1, capacity + 1
        for r in range(len(rows)):
            # Tightest row that still fits: leaves the big gaps for big samples.
            if lengths[i] <= free[r] < best_free and used_images[r] + images[i] <= max_images:
                best, best_free = r, free[r]
        if best < 0:
            rows.append([])
            free.append(capacity)
            used_images.append(0)
            best = len(rows) - 1
        rows[best].append(i)
        free[best] -= lengths[i]
        used_images[best] += images[i]
    return rows


def empty_row(length: int) -> dict:
    """A row of padding only (`segment_ids` all 0, labels all -100)."""
    return {
        "input_ids": np.zeros(length, np.int32),
        "labels": np.full(length, IGNORE_INDEX, np.int32),
        "positions": np.zeros(length, np.int32),
        "segment_ids": np.zeros(length, np.int32),
        "skipped": np.int32(0),
        "_images": [],
        "_image_hws": [],
        "_image_segments": [],
        "_ids": [],
        "_skipped": [],
    }


def assemble_row(samples: Sequence[dict], length: int, *, pad_token_id: int = 0) -> dict:
    """Samples (encoded, see `encode_example`) laid end to end into one row of `length` tokens.

    Returns a row dict (see module docstring); raises `ValueError` if they do not fit.
    """
    row = empty_row(length)
    if pad_token_id:
        row["input_ids"][:] = pad_token_id
    pos = 0
    for seg, sample in enumerate(samples, start=1):
        n = len(sample["input_ids"])
        if pos + n > length:
            raise ValueError(f"samples need {pos + n} tokens, row has {length}")
        row["input_ids"][pos : pos + n] = sample["input_ids"]
        row["labels"][pos : pos + n] = sample["labels"]
        # The first token of a sample is never a target: a shifted loss would
        # otherwise predict it from the previous sample in the row.
        row["labels"][pos] = IGNORE_INDEX
        row["positions"][pos : pos + n] = np.arange(n, dtype=np.int32)
        row["segment_ids"][pos : pos + n] = seg
        if sample.get("image") is not None:
            row["_images"].append(sample["image"])
            row["_image_hws"].append(sample.get("image_hw"))
            row["_image_segments"].append(seg)
        row["_ids"].append(sample["id"])
        pos += n
    return row


def add_skips(row: dict, skips: Sequence[tuple[str, str]]) -> dict:
    """Attributes dropped samples `(id, reason)` to `row`."""
    row["_skipped"] = list(row["_skipped"]) + [tuple(s) for s in skips]
    row["skipped"] = np.int32(len(row["_skipped"]))
    return row


def blank_segment(row: dict, segment: int, pad_token_id: int = 0) -> None:
    """Turns one sample of a row into padding (after its image failed to decode)."""
    mask = row["segment_ids"] == segment
    row["input_ids"][mask] = pad_token_id
    row["labels"][mask] = IGNORE_INDEX
    row["positions"][mask] = 0
    row["segment_ids"][mask] = 0


class DecodeImages:
    """Row -> row with `images uint8[M, S, S, 3]` and `image_mask bool[M]`, metadata dropped.

    Pixels stay uint8 (resized and cropped, not normalised) so that worker
    processes ship 4x fewer bytes; `normalize_images` finishes them in the
    consuming process (the `Loader` does).

    With `anyres` (an `AnyresConfig`) images are tiles, `uint8[M, K, S, S, 3]`
    (K = `anyres.max_tiles`, the global view first, unused tiles zero), and the
    row also gets `image_grids int32[M, 6]` (`AnyresConfig.image_grid`, zeros
    for empty slots). The decoded image must have the size its placeholders
    were counted for (`image_hw` from encoding), else it is a corrupt sample.

    A sample whose image cannot be read or decoded is blanked out of the row
    (its placeholders with it, so images and placeholders stay aligned) and
    counted as skipped; in `strict` mode it raises `DataError` instead.
    """

    def __init__(
        self,
        *,
        max_images: int,
        mode: str,
        size: int,
        on_error: str = "skip",
        pad_token_id: int = 0,
        anyres=None,
    ):
        self.max_images, self.mode, self.size = max_images, mode, size
        self.on_error, self.pad_token_id = on_error, pad_token_id
        self.anyres = anyres
        if (mode == "anyres") != (anyres is not None):
            raise ValueError("DecodeImages: mode 'anyres' and an anyres geometry go together")

    def _decode(self, ref, hw):
        """uint8 pixels of one image (and its grid for anyres)."""
        if self.anyres is None:
            return prepare_pixels(ref, mode=self.mode, size=self.size), None
        tiles = prepare_pixels(ref, mode="anyres", size=self.size, grid_pinpoints=self.anyres.grid_pinpoints)
        pil_hw = image_hw(ref)
        if hw is None or tuple(int(x) for x in hw) != pil_hw:
            raise ValueError(f"image is {pil_hw[0]}x{pil_hw[1]}, its placeholders were counted for {hw}")
        return tiles, np.asarray(self.anyres.image_grid(*pil_hw), np.int32)

    def __call__(self, row: dict) -> dict:
        tiles = (self.anyres.max_tiles,) if self.anyres is not None else ()
        images = np.zeros((self.max_images,) + tiles + (self.size, self.size, 3), np.uint8)
        grids = np.zeros((self.max_images, 6), np.int32)
        mask = np.zeros((self.max_images,), bool)
        skipped = list(row["_skipped"])
        slot = 0
        hws = row.get("_image_hws") or [None] * len(row["_images"])
        for ref, hw, seg in zip(row["_images"], hws, row["_image_segments"]):
            sample_id = row["_ids"][seg - 1]
            try:
                pixels, grid = self._decode(ref, hw)
                if grid is None:
                    images[slot] = pixels
                else:
                    images[slot, : len(pixels)] = pixels
                    grids[slot] = grid
            except Exception as e:
                fallback = "missing_image" if isinstance(e, FileNotFoundError) else "corrupt_image"
                reason = getattr(e, "reason", None) or fallback  # e.g. image_too_large
                error = DataError(sample_id, reason, f"{type(e).__name__}: {e}")
                if self.on_error == "strict":
                    raise error from e
                log.warning("skipping %s", error)
                blank_segment(row, seg, self.pad_token_id)
                skipped.append((sample_id, reason))
                continue
            mask[slot] = True
            slot += 1
        out = {key: row[key] for key in ROW_KEYS}
        out["images"], out["image_mask"] = images, mask
        if self.anyres is not None:
            out["image_grids"] = grids
        out["skipped"] = np.int32(len(skipped))
        out["_skipped"] = skipped
        return out


def normalize_images(batch: dict) -> dict:
    """`images` uint8[..., M, S, S, 3] -> float32 CLIP pixels; slots without an image stay 0."""
    pixels, mask = batch["images"], batch["image_mask"]
    if pixels.dtype == np.float32:
        return batch
    out = np.zeros(pixels.shape, np.float32)
    out[mask] = normalize(pixels[mask])
    return {**batch, "images": out}


def stack_rows(rows: Sequence[dict]) -> dict:
    """Rows -> a batch: arrays stacked on a new leading axis, `_skipped` lists concatenated."""
    batch = {key: np.stack([row[key] for row in rows]) for key in rows[0] if not key.startswith("_")}
    batch["_skipped"] = [s for row in rows for s in row.get("_skipped", [])]
    return batch


class PadCollate:
    """Elements of one local batch (padding mode) -> rows of one sample each, padded to a bucket.

    The row length is the longest sample rounded up to `pad_multiple`, capped at
    `max_length`; dropped samples and the empty slots of a modality's last
    global batch become empty rows (skips counted on them).
    """

    def __init__(self, *, max_length: int, pad_multiple: int, pad_token_id: int = 0):
        self.max_length, self.pad_multiple, self.pad_token_id = (
            max_length,
            pad_multiple,
            pad_token_id,
        )

    def __call__(self, elements: Sequence[dict | None]) -> list[dict]:
        longest = max([len(e["input_ids"]) for e in elements if e and not is_skip(e)] or [1])
        length = min(self.max_length, -(-longest // self.pad_multiple) * self.pad_multiple)
        rows = []
        for element in elements:
            if element is None:
                rows.append(empty_row(length))
            elif is_skip(element):
                rows.append(add_skips(empty_row(length), [(element["id"], element["_skip"])]))
            else:
                rows.append(assemble_row([element], length, pad_token_id=self.pad_token_id))
        return rows


def grouped_order(lengths: np.ndarray, global_batch: int, *, seed: int, epoch: int, group_factor: int) -> np.ndarray:
    """LLaVA's `group_by_modality_length` order: every global batch all-image or all-text, similar lengths.

    Per modality: shuffle, cut into megabatches of `group_factor` global batches,
    sort each megabatch by length (longest first), cut into global batches;
    then shuffle the batches of both modalities together. `group_factor=1`
    is the reference (random batches, sorted within). A modality's last batch
    is filled with -1 (empty rows) rather than mixed with the other modality.

    Args:
      lengths: int[N] signed lengths (+ image samples, - text-only), see `modality_lengths`.
    Returns:
      int64[num_batches, global_batch] source indices, -1 for empty slots.
    """
    rng = np.random.default_rng([seed, epoch])
    lengths = np.asarray(lengths)
    batches = []
    for group in (np.flatnonzero(lengths > 0), np.flatnonzero(lengths <= 0)):
        if len(group) == 0:
            continue
        group = rng.permutation(group)
        mega = global_batch * max(1, group_factor)
        for start in range(0, len(group), mega):
            chunk = group[start : start + mega]
            chunk = chunk[np.argsort(-np.abs(lengths[chunk]), kind="stable")]
            for b in range(0, len(chunk), global_batch):
                batch = np.full(global_batch, -1, np.int64)
                part = chunk[b : b + global_batch]
                batch[: len(part)] = part
                batches.append(batch)
    if not batches:
        return np.zeros((0, global_batch), np.int64)
    batches = np.stack(batches)
    return batches[rng.permutation(len(batches))]


class PackIterDataset(grain.IterDataset):
    """Packs encoded samples (and skip markers) into rows; see the module docstring.

    Args:
      parent: IterDataset of `encode_example` outputs or skip markers.
      max_length: tokens per row.
      max_images: images per row.
      window: samples read and packed together (larger packs tighter).
      seed: seed of the row order within each window.
      pad_token_id: id of padding tokens.
    """

    def __init__(
        self,
        parent,
        *,
        max_length: int,
        max_images: int,
        window: int = 512,
        seed: int = 0,
        pad_token_id: int = 0,
    ):
        super().__init__(parent)
        self.max_length, self.max_images = max_length, max_images
        self.window, self.seed, self.pad_token_id = window, seed, pad_token_id

    def __iter__(self):
        return _PackIterator(self._parent.__iter__(), self)

    def __str__(self) -> str:
        return f"PackIterDataset(max_length={self.max_length}, max_images={self.max_images})"


class _PackIterator(grain.DatasetIterator):
    def __init__(self, parent, config: PackIterDataset):
        super().__init__(parent)
        self._cfg = config
        self._window_start = parent.get_state()
        self._window_index = 0
        self._emitted = 0
        self._carry_in: list[tuple[str, str]] = []  # skips carried into this window
        self._carry_out: list[tuple[str, str]] = []
        self._rows: list[dict] | None = None
        self._exhausted = False

    def _fill(self) -> None:
        """Reads and packs the current window into `self._rows` (rows in emission order)."""
        cfg = self._cfg
        samples, skips = [], []
        while len(samples) + len(skips) < cfg.window:
            try:
                element = next(self._parent)
            except StopIteration:
                self._exhausted = True
                break
            if is_skip(element):
                skips.append((element["id"], element["_skip"]))
            else:
                samples.append(element)
        lengths = [len(s["input_ids"]) for s in samples]
        n_images = [int(s.get("image") is not None) for s in samples]
        plan = plan_rows(lengths, n_images, cfg.max_length, cfg.max_images)
        rng = np.random.default_rng([cfg.seed, self._window_index])
        rows = [
            assemble_row(
                [samples[i] for i in plan[r]],
                cfg.max_length,
                pad_token_id=cfg.pad_token_id,
            )
            for r in rng.permutation(len(plan))
        ]
        skips = self._carry_in + skips
        if rows:
            add_skips(rows[0], skips)
            self._carry_out = []
        else:
            # A window of dropped samples only: their counts ride on the next row.
            self._carry_out = skips
        self._rows = rows

    def _advance(self) -> None:
        self._window_start = self._parent.get_state()
        self._window_index += 1
        self._emitted = 0
        self._carry_in, self._carry_out = self._carry_out, []
        self._rows = None

    def __next__(self) -> dict:
        while True:
            if self._rows is None:
                if self._exhausted:
                    raise StopIteration
                self._fill()
            if self._emitted < len(self._rows):
                row = self._rows[self._emitted]
                self._emitted += 1
                return row
            self._advance()

    def get_state(self) -> dict[str, Any]:
        if self._rows is not None and self._emitted >= len(self._rows):
            self._advance()
        return {
            "parent": self._window_start,
            "window_index": self._window_index,
            "emitted": self._emitted,
            "carry": [list(s) for s in self._carry_in],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._window_start = state["parent"]
        self._window_index = state["window_index"]
        self._emitted = state["emitted"]
        self._carry_in = [tuple(s) for s in state["carry"]]
        self._carry_out = []
        self._exhausted = False
        self._rows = None
        if self._emitted:
            # Re-read and re-pack the window we were in (deterministic); rows
            # before `emitted` are not emitted again.
            self._fill()
