"""The grain input pipeline for both training stages: source -> order -> slice -> encode -> rows -> batches.

Packing (`batching="pack"`)::

    source -> global shuffle (seeded, per epoch) -> repeat -> this process's slice
      -> encode (tokenize + labels) -> pack rows (window best-fit) -> decode images
      -> batch -> [grain worker processes] -> global jax.Arrays

Padding (`batching="pad"`)::

    source -> modality-grouped global batches (seeded, per epoch) -> this process's
      rows of each -> encode -> pad to a length bucket -> decode images -> batch
      -> [workers] -> global jax.Arrays (length agreed across processes)

Every batch is a dict: `input_ids`, `labels`, `positions`, `segment_ids`
(int32[B, T]; segment 0 = padding, 1.. = samples of the row, positions
restarting per sample), `images` float32[B, M, S, S, 3], `image_mask` bool[B, M]
(images in order of their placeholders), with `image_mode="anyres"`
`images` float32[B, M, K, S, S, 3] tiles and `image_grids` int32[B, M, 6]
(`llava_jax.model.anyres`), and `skipped` int32[B] (samples
dropped and attributed to each row; their ids and reasons are logged and kept
in `Loader.skipped` / `Loader.recent_skips`). `Loader.get_state()` is
JSON-serialisable; `set_state` resumes with identical continuation.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading

import grain
import jax
import numpy as np
from absl import flags

from llava_jax.config import AnyresConfig
from llava_jax.data.encode import IGNORE_INDEX, EncodeFn
from llava_jax.data.packing import (
    DecodeImages,
    PackIterDataset,
    PadCollate,
    grouped_order,
    normalize_images,
    plan_rows,
    stack_rows,
)
from llava_jax.data.paths import DEFAULT_MAX_IMAGE_BYTES
from llava_jax.sharding import DEFAULT_RULES, Rules, batch_axes, batch_sharding

log = logging.getLogger(__name__)

BATCH_KEYS = (
    "input_ids",
    "labels",
    "positions",
    "segment_ids",
    "images",
    "image_mask",
    "image_grids",
    "skipped",
)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input pipeline settings (defaults: LLaVA-1.5 stage 2 with packing).

    `batching`: `pack` (several samples per row of `pack_length` tokens, default
    `max_length`, at most `max_images_per_row` images; samples are truncated to
    `max_length`) or `pad` (one sample per row, modality-grouped length buckets of
    `pad_multiple`, sorted within megabatches of `group_factor` global batches;
    `group_factor=1` is the reference's grouping). `image_mode="anyres"` (LLaVA-1.5-HD)
    needs `anyres`, the model's `AnyresConfig` (`LlavaConfig.anyres`): each image
    gets the placeholders its size makes and is decoded into tiles. `on_error`: `skip` (log,
    count, continue) or `strict` (raise with the sample id and reason).
    `max_image_bytes`: image files above it are skipped (`image_too_large`).
    `read_threads` / `read_buffer`: grain's reading threads and prefetch buffer
    (elements: encoded samples when packing, whole batches when padding). grain
    polls every buffered element on each read, so its default buffer of 500 cost
    the demo's packing 0.5 s per window of 256 samples (bench/RESULTS.md, session 5).
    """

    template: str = "vicuna_v1"
    image_mode: str = "pad"
    image_size: int = 336
    image_seq_length: int = 576
    image_token_index: int = 32000
    max_length: int = 2048
    global_batch_size: int = 128
    batching: str = "pack"
    max_images_per_row: int = 4
    pack_length: int | None = None
    pack_window: int = 512
    pad_multiple: int = 128
    group_factor: int = 8
    seed: int = 0
    num_epochs: int | None = 1
    num_workers: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 4
    read_buffer: int = 16
    on_error: str = "skip"
    pad_token_id: int = 0
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    anyres: AnyresConfig | None = None

    def __post_init__(self):
        if self.batching not in ("pack", "pad"):
            raise ValueError(f"batching must be 'pack' or 'pad', got {self.batching!r}")
        if self.on_error not in ("skip", "strict"):
            raise ValueError(f"on_error must be 'skip' or 'strict', got {self.on_error!r}")
        if self.image_seq_length > self.max_length:
            raise ValueError("image_seq_length exceeds max_length: no image sample could fit")
        if self.image_mode not in ("pad", "square", "anyres"):
            raise ValueError(f"image_mode must be 'pad', 'square' or 'anyres', got {self.image_mode!r}")
        if (self.image_mode == "anyres") != (self.anyres is not None):
            raise ValueError(
                "image_mode 'anyres' and the anyres geometry (DataConfig.anyres, the model's "
                "LlavaConfig.anyres) go together"
            )
        if self.anyres is not None and self.anyres.tile_size != self.image_size:
            raise ValueError(f"anyres tiles are {self.anyres.tile_size}px but image_size is {self.image_size}")
        if self.max_images_per_row < 1:
            raise ValueError("max_images_per_row must be at least 1")
        if self.read_threads < 1 or self.read_buffer < 1:
            raise ValueError(
                f"read_threads and read_buffer must be at least 1, got {self.read_threads}, {self.read_buffer}"
            )
        if self.pack_length is not None and self.pack_length < self.max_length:
            raise ValueError("pack_length must be at least max_length (a sample must fit)")
        if self.max_image_bytes < 1:
            raise ValueError(f"max_image_bytes must be at least 1, got {self.max_image_bytes}")

    @property
    def row_length(self) -> int:
        """Tokens per packed row: `pack_length`, or `max_length` when unset."""
        return self.pack_length or self.max_length


def stage1_config(**overrides) -> DataConfig:
    """LLaVA-1.5 stage 1 (LCS-558K): `plain` template, `square` images, packed.

    Rows of 2400 tokens hold four ~593-token caption samples (modelled 97%
    non-pad, vs 87% for rows of 2048); 64 rows ~ the paper's 256 samples per step.
    """
    base = DataConfig(
        template="plain",
        image_mode="square",
        global_batch_size=64,
        batching="pack",
        pack_length=2400,
        max_images_per_row=4,
    )
    return dataclasses.replace(base, **overrides)


def stage2_config(**overrides) -> DataConfig:
    """LLaVA-1.5 stage 2 (665K mix): `vicuna_v1`, `pad` images, packed.

    Samples are truncated to 2048 as in the paper; rows of 4096 tokens hold
    ~4.6 samples (modelled 95% non-pad, vs 87% for rows of 2048), so 28 rows ~
    the paper's 128 samples per step (round to what the mesh divides).
    """
    base = DataConfig(
        template="vicuna_v1",
        image_mode="pad",
        global_batch_size=28,
        batching="pack",
        pack_length=4096,
        max_images_per_row=8,
    )
    return dataclasses.replace(base, **overrides)


class _GroupedRead:
    """Local index -> encoded element of the modality-grouped order (padding mode)."""

    def __init__(
        self,
        source,
        encode: EncodeFn,
        config: DataConfig,
        process_index: int,
        local_batch: int,
    ):
        self.source, self.encode, self.config = source, encode, config
        self.process_index, self.local_batch = process_index, local_batch
        self.lengths = np.asarray(source.modality_lengths())
        self._epoch, self._order = -1, None

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            c = self.config
            self._order = grouped_order(
                self.lengths,
                c.global_batch_size,
                seed=c.seed,
                epoch=epoch,
                group_factor=c.group_factor,
            )
            self._epoch = epoch
        return self._order

    def per_epoch(self) -> int:
        return len(self.order(0)) * self.local_batch

    def __call__(self, index: int, _) -> dict:
        epoch, i = divmod(index, self.per_epoch())
        batch, row = divmod(i, self.local_batch)
        source_index = self.order(epoch)[batch, self.process_index * self.local_batch + row]
        if source_index < 0:
            return {"id": "", "_empty": True}
        return self.encode(self.source[int(source_index)])


class _PadBatch:
    """Elements of one local batch -> padded, image-decoded batch (runs in grain workers)."""

    def __init__(self, collate: PadCollate, decode: DecodeImages):
        self.collate, self.decode = collate, decode

    def __call__(self, elements):
        elements = [None if e.get("_empty") else e for e in elements]
        return stack_rows([self.decode(row) for row in self.collate(elements)])


def _process_info(process_index, process_count) -> tuple[int, int]:
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if not 0 <= pi < pc:
        raise ValueError(f"process_index {pi} not in [0, {pc})")
    return pi, pc


def build_dataset(
    config: DataConfig,
    source,
    tokenizer,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """The grain dataset of this process's batches (numpy dicts, see module docstring).

    Args:
      config: pipeline settings.
      source: a random-access source of raw examples (see `sources`).
      tokenizer: a fast HF tokenizer.
      process_index, process_count: this process's slice (default: JAX's).
    Returns:
      IterDataset of local batches with `global_batch_size / process_count` rows;
      their `images` are uint8 (resized, not normalised: 4x less to ship from
      workers) until `normalize_images` (the `Loader` applies it).
    """
    pi, pc = _process_info(process_index, process_count)
    if config.global_batch_size % pc:
        raise ValueError(f"global batch {config.global_batch_size} not divisible by {pc} processes")
    local_batch = config.global_batch_size // pc
    encode = EncodeFn(tokenizer, config)
    read_options = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.read_buffer)
    if config.batching == "pack":
        decode = DecodeImages(
            max_images=config.max_images_per_row,
            mode=config.image_mode,
            size=config.image_size,
            on_error=config.on_error,
            pad_token_id=config.pad_token_id,
            anyres=config.anyres,
        )
        ds = grain.MapDataset.source(source).shuffle(seed=config.seed).repeat(config.num_epochs)
        ds = ds[pi::pc].map(encode)
        it = PackIterDataset(
            ds.to_iter_dataset(read_options),
            max_length=config.row_length,
            max_images=config.max_images_per_row,
            window=config.pack_window,
            seed=config.seed,
            pad_token_id=config.pad_token_id,
        )
        it = it.map(decode).batch(local_batch, drop_remainder=True, batch_fn=stack_rows)
    else:
        decode = DecodeImages(
            max_images=1,
            mode=config.image_mode,
            size=config.image_size,
            on_error=config.on_error,
            pad_token_id=config.pad_token_id,
            anyres=config.anyres,
        )
        read = _GroupedRead(source, encode, config, pi, local_batch)
        ds = grain.MapDataset.range(read.per_epoch()).repeat(config.num_epochs).map_with_index(read)
        collate = PadCollate(
            max_length=config.max_length,
            pad_multiple=config.pad_multiple,
            pad_token_id=config.pad_token_id,
        )
        ds = ds.batch(local_batch, drop_remainder=True, batch_fn=_PadBatch(collate, decode))
        it = ds.to_iter_dataset(read_options)
    if config.num_workers > 0:
        # grain's worker processes read absl flags; outside an absl app they are unparsed.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.num_workers,
                per_worker_buffer_size=config.worker_buffer_size,
            ),
            worker_init_fn=exit_with_parent,
        )
    return it


def exit_with_parent(worker_index: int = 0, worker_count: int = 1) -> None:
    """grain worker start-up: end this worker as soon as the process that started it is gone.

    grain's workers are daemonic, so a trainer that exits normally stops them; one that is
    SIGKILLed (the launcher's grace ran out, the OOM killer) cannot, and each worker (hundreds of
    MB) would live on under init. A thread here waits on the parent's sentinel (a pipe
    multiprocessing gives every spawned child, readable once the parent is gone) and exits. Not
    `PR_SET_PDEATHSIG`: that fires when the parent *thread* ends, and grain starts its workers
    from short-lived threads.
    """
    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing child: nothing to tie to
        return

    def watch():
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="llava_jax-exit-with-parent", daemon=True).start()


def pad_batch_to(batch: dict, length: int, pad_token_id: int = 0) -> dict:
    """Right-pads the `[B, T]` arrays of a batch to `length` (padding semantics preserved)."""
    t = batch["input_ids"].shape[1]
    if t == length:
        return batch
    if t > length:
        raise ValueError(f"batch length {t} exceeds {length}")
    fill = {
        "input_ids": pad_token_id,
        "labels": IGNORE_INDEX,
        "positions": 0,
        "segment_ids": 0,
    }
    out = dict(batch)
    for key, value in fill.items():
        out[key] = np.pad(batch[key], ((0, 0), (0, length - t)), constant_values=value)
    return out


def make_global_batch(
    batch: dict,
    mesh,
    rules: Rules = DEFAULT_RULES,
    *,
    pad_token_id: int = 0,
    agree_length: bool = True,
) -> dict:
    """Process-local numpy batch -> global `jax.Array`s sharded as `sharding.batch_sharding(mesh, rules)`.

    Every array is split along its first axis (global rows = local rows x
    processes). With several processes and `agree_length` (padding mode, where
    each process pads to its own longest row) all first pad to the longest
    length of any process: one small host all-gather per batch.
    """
    if agree_length and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        lengths = multihost_utils.process_allgather(np.int32(batch["input_ids"].shape[1]))
        batch = pad_batch_to(batch, int(np.max(lengths)), pad_token_id)
    sharding = batch_sharding(mesh, rules)
    shards = int(np.prod([mesh.shape[a] for a in batch_axes(rules) if a in mesh.shape]))
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        if global_shape[0] % shards:
            raise ValueError(f"global batch {global_shape[0]} not divisible by the {shards} batch shards")
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


class Loader:
    """Iterator of global batches with checkpointable state and cumulative skip counts.

    Args:
      dataset: from `build_dataset`.
      mesh: if given, batches become global `jax.Array`s sharded by the `batch` rule of `rules`;
        otherwise they stay process-local numpy.
      agree_length: processes agree on the row length per batch (padding mode).

    `read_ahead()` reads the next batch early (the training loop reads ahead with
    `llava_jax/train/feed.py` instead); `get_state` and `skipped` still describe
    what `next` has returned, so a checkpoint taken with a batch read ahead
    resumes at that batch.
    """

    def __init__(
        self,
        dataset: grain.IterDataset,
        *,
        mesh=None,
        rules: Rules = DEFAULT_RULES,
        pad_token_id: int = 0,
        agree_length: bool = True,
    ):
        self._dataset = dataset
        self.agree_length = agree_length
        self._it = iter(dataset)
        self.mesh, self.rules, self.pad_token_id = mesh, rules, pad_token_id
        self.skipped: collections.Counter = collections.Counter()
        self.recent_skips: collections.deque = collections.deque(maxlen=1000)
        self.samples = 0  # samples delivered in the batches `next` returned (the skip guard's denominator)
        self._ahead = None  # (grain state before it, batch or None at the end, its skips)

    def __iter__(self):
        return self

    def _read(self):
        try:
            batch = next(self._it)
        except StopIteration:
            return None, [], 0
        skips = batch.pop("_skipped", [])
        # A sample's first token is the one at position 0 of a non-padding segment.
        samples = int(np.count_nonzero((batch["positions"] == 0) & (batch["segment_ids"] > 0)))
        batch = normalize_images(batch)
        if self.mesh is not None:
            batch = make_global_batch(
                batch,
                self.mesh,
                self.rules,
                pad_token_id=self.pad_token_id,
                agree_length=self.agree_length,
            )
        return batch, skips, samples

    def read_ahead(self) -> None:
        """Read the next batch now (no-op if one is already waiting); `next` returns it."""
        if self._ahead is None:
            state = self._it.get_state()
            self._ahead = (state, *self._read())

    def __next__(self) -> dict:
        if self._ahead is not None:
            _, batch, skips, samples = self._ahead
            self._ahead = None
        else:
            batch, skips, samples = self._read()
        if batch is None:
            raise StopIteration
        self.samples += samples
        for sample_id, reason in skips:
            self.skipped[reason] += 1
            self.recent_skips.append((sample_id, reason))
        return batch

    def get_state(self) -> dict:
        """JSON-serialisable pipeline position (after the last batch `next` returned), skip and sample counts."""
        grain_state = self._ahead[0] if self._ahead is not None else self._it.get_state()
        return {"grain": grain_state, "skipped": dict(self.skipped), "samples": self.samples}

    def set_state(self, state: dict) -> None:
        self._ahead = None
        self._it.set_state(state["grain"])
        self.skipped = collections.Counter(state.get("skipped", {}))
        self.samples = int(state.get("samples", 0))
        if "samples" not in state:  # an older checkpoint: restart the skip counts with the sample count
            self.skipped = collections.Counter()

    def close(self) -> None:
        """Stops grain worker processes, if any."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def create_loader(
    config: DataConfig,
    source,
    tokenizer,
    *,
    mesh=None,
    rules: Rules = DEFAULT_RULES,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Loader:
    """`Loader` over `build_dataset(config, source, tokenizer, ...)`."""
    dataset = build_dataset(
        config,
        source,
        tokenizer,
        process_index=process_index,
        process_count=process_count,
    )
    return Loader(
        dataset,
        mesh=mesh,
        rules=rules,
        pad_token_id=config.pad_token_id,
        # Packed rows all have `row_length` tokens: no need to agree per batch.
        agree_length=config.batching == "pad",
    )


def estimate_rows(config: DataConfig, source, tokenizer, *, sample: int = 2000, seed: int = 0) -> int:
    """Rows one epoch yields (packing: from a packed sample of encoded lengths; padding: exact).

    Encodes up to `sample` random examples (no pixels decoded; anyres reads image headers) and
    packs them as the pipeline does; the rows per sample scale to the source.
    Use it to size the learning-rate schedule for packed training.
    """
    n = len(source)
    if config.batching == "pad" or n == 0:
        return n
    encode = EncodeFn(tokenizer, config)
    picks = np.random.default_rng(seed).permutation(n)[:sample]
    lengths, images = [], []
    for i in picks:
        out = encode(source[int(i)])
        if "input_ids" in out:
            lengths.append(len(out["input_ids"]))
            images.append(int(out["image"] is not None))
    rows = 0
    for s in range(0, len(lengths), config.pack_window):
        window = slice(s, s + config.pack_window)
        rows += len(
            plan_rows(
                lengths[window],
                images[window],
                config.row_length,
                config.max_images_per_row,
            )
        )
    return max(1, round(rows * n / max(1, len(picks))))


def batch_stats(batch: dict) -> dict:
    """Token accounting of one batch: real (non-pad) and supervised tokens against the total."""
    segment_ids = np.asarray(batch["segment_ids"])
    total = segment_ids.size
    real = int((segment_ids > 0).sum())
    supervised = int((np.asarray(batch["labels"]) != IGNORE_INDEX).sum())
    return {
        "total": total,
        "real": real,
        "supervised": supervised,
        "images": int(np.asarray(batch["image_mask"]).sum()),
    }
