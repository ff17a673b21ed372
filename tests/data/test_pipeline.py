"""The grain pipeline end to end: coverage, layout, process slices, checkpoints, global arrays."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from llava_jax.data.encode import IGNORE_INDEX, EncodeFn
from llava_jax.data.image import preprocess_image
from llava_jax.data.packing import normalize_images
from llava_jax.data.pipeline import (
    DataConfig,
    Loader,
    batch_stats,
    build_dataset,
    create_loader,
    estimate_rows,
    make_global_batch,
    pad_batch_to,
)
from llava_jax.data.sources import JsonSource

IMG = -200
CONFIG = DataConfig(
    template="vicuna_v1",
    image_mode="pad",
    image_size=28,
    image_seq_length=16,
    image_token_index=IMG,
    max_length=384,
    global_batch_size=4,
    batching="pack",
    max_images_per_row=3,
    pack_window=12,
    pad_multiple=32,
    group_factor=2,
    seed=1,
)


@pytest.fixture(scope="module")
def source(dataset):
    return JsonSource(*dataset)


@pytest.fixture(scope="module")
def encoded(source, tokenizer):
    """Every example encoded alone, keyed by its token ids (to recognise it inside rows)."""
    encode = EncodeFn(tokenizer, CONFIG)
    out = {}
    for i in range(len(source)):
        e = encode(source[i])
        out[tuple(e["input_ids"].tolist())] = e
    return out


def segments(batch):
    """(row, input_ids of the segment, its label slice) for every sample in a numpy batch."""
    for b in range(batch["input_ids"].shape[0]):
        seg = batch["segment_ids"][b]
        for s in range(1, int(seg.max()) + 1):
            mask = seg == s
            if mask.any():
                yield (
                    b,
                    tuple(batch["input_ids"][b][mask].tolist()),
                    batch["labels"][b][mask],
                )


def check_layout(batch, config):
    ids, seg, pos = batch["input_ids"], batch["segment_ids"], batch["positions"]
    assert ids.dtype == np.int32 and batch["labels"].dtype == np.int32
    assert batch["images"].dtype == np.float32 and batch["image_mask"].dtype == bool
    assert (batch["labels"][seg == 0] == IGNORE_INDEX).all()
    for b in range(ids.shape[0]):
        # Placeholders and valid images agree row by row: the model's scatter never misaligns.
        n_images = int(batch["image_mask"][b].sum())
        assert (ids[b] == IMG).sum() == n_images * config.image_seq_length
        assert not batch["image_mask"][b][n_images:].any()  # valid images come first
        for s in np.unique(seg[b][seg[b] > 0]):
            idx = np.flatnonzero(seg[b] == s)
            assert (np.diff(idx) == 1).all()  # contiguous
            np.testing.assert_array_equal(pos[b][idx], np.arange(len(idx)))


def image_of(example, config):
    return preprocess_image(example["image"], mode=config.image_mode, size=config.image_size)


def test_pack_one_epoch(source, tokenizer, encoded):
    loader = create_loader(CONFIG, source, tokenizer)
    seen = []
    stats = []
    for batch in loader:
        check_layout(batch, CONFIG)
        assert batch["input_ids"].shape == (4, CONFIG.max_length)
        assert batch["images"].shape == (4, 3, 28, 28, 3)
        stats.append(batch_stats(batch))
        slot = {}
        for b, key, labels in segments(batch):
            example = encoded[key]
            seen.append(example["id"])
            np.testing.assert_array_equal(labels[1:], example["labels"][1:])
            if example["image"] is not None:
                # Images are in the order of their placeholders within the row.
                k = slot.get(b, 0)
                slot[b] = k + 1
                np.testing.assert_array_equal(batch["images"][b, k], image_of(example, CONFIG))
    # drop_remainder may leave out the last partial batch; nothing appears twice.
    assert len(seen) == len(set(seen)) and len(seen) >= 0.8 * len(encoded)
    assert sum(loader.skipped.values()) == 0
    real = sum(s["real"] for s in stats) / sum(s["total"] for s in stats)
    assert real > 0.5


def test_pad_mode_one_epoch(source, tokenizer, encoded):
    config = dataclasses.replace(CONFIG, batching="pad")
    lengths = source.modality_lengths()
    seen = []
    for batch in create_loader(config, source, tokenizer):
        check_layout(batch, config)
        t = batch["input_ids"].shape[1]
        assert t % config.pad_multiple == 0 and t <= config.max_length
        assert batch["images"].shape == (4, 1, 28, 28, 3)
        rows = list(segments(batch))
        assert all(len(np.unique(batch["segment_ids"][b][batch["segment_ids"][b] > 0])) <= 1 for b in range(4))
        kinds = {encoded[key]["image"] is not None for _, key, _ in rows}
        assert len(kinds) == 1  # every global batch is all-image or all-text
        seen += [encoded[key]["id"] for _, key, _ in rows]
    assert sorted(seen) == sorted(e["id"] for e in encoded.values())
    assert len(lengths) == len(seen)


@pytest.mark.parametrize("batching", ["pack", "pad"])
def test_process_slices_partition_the_data(source, tokenizer, encoded, batching):
    config = dataclasses.replace(CONFIG, batching=batching, num_epochs=1)
    per_process = []
    for p in range(2):
        ids = []
        for batch in create_loader(config, source, tokenizer, process_index=p, process_count=2):
            assert batch["input_ids"].shape[0] == 2  # local rows = global / processes
            ids += [encoded[key]["id"] for _, key, _ in segments(batch)]
        per_process.append(ids)
    assert not set(per_process[0]) & set(per_process[1])
    if batching == "pad":
        # Padding mode splits each global batch: the union is the single-process epoch.
        assert sorted(per_process[0] + per_process[1]) == sorted(e["id"] for e in encoded.values())
        single = [b for b in create_loader(config, source, tokenizer)]
        local = [list(create_loader(config, source, tokenizer, process_index=p, process_count=2)) for p in range(2)]
        for g, batch in enumerate(single):
            for p in range(2):
                part = local[p][g]
                t = batch["input_ids"].shape[1]
                part = pad_batch_to(part, t) if part["input_ids"].shape[1] < t else part
                np.testing.assert_array_equal(part["input_ids"], batch["input_ids"][2 * p : 2 * p + 2])


def take(loader, n):
    return [next(loader) for _ in range(n)]


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("batching", ["pack", "pad"])
def test_checkpoint_restore_identical_continuation(source, tokenizer, batching):
    config = dataclasses.replace(CONFIG, batching=batching, num_epochs=None)
    loader = create_loader(config, source, tokenizer)
    take(loader, 3)
    state = json.loads(json.dumps(loader.get_state()))  # what a checkpoint stores
    expected = take(loader, 12)  # crosses an epoch boundary
    resumed = create_loader(config, source, tokenizer)
    resumed.set_state(state)
    for a, b in zip(take(resumed, 12), expected):
        assert_batches_equal(a, b)


@pytest.mark.slow
def test_workers_checkpoint(source, tokenizer, encoded):
    """Two grain worker processes: deterministic and resumable from a JSON state."""
    config = dataclasses.replace(CONFIG, num_workers=2, num_epochs=None)
    loader = create_loader(config, source, tokenizer)
    try:
        take(loader, 2)
        state = json.loads(json.dumps(loader.get_state()))
        expected = take(loader, 6)
    finally:
        loader.close()
    resumed = create_loader(config, source, tokenizer)
    try:
        resumed.set_state(state)
        got = take(resumed, 6)
    finally:
        resumed.close()
    for a, b in zip(got, expected):
        assert_batches_equal(a, b)
    # Workers see every sample: 6 + 2 batches of 4 packed rows cover more than an epoch.
    ids = {encoded[k]["id"] for batch in expected for _, k, _ in segments(batch)}
    assert len(ids) >= 0.5 * len(encoded)


def test_global_arrays_on_a_mesh(source, tokenizer):
    from llava_jax.sharding import make_mesh

    assert jax.device_count() == 8
    mesh = make_mesh((2, 4, 1))
    config = dataclasses.replace(CONFIG, global_batch_size=8)
    local = next(iter(build_dataset(config, source, tokenizer)))
    local.pop("_skipped")
    assert local["images"].dtype == np.uint8  # workers ship uint8
    local = normalize_images(local)
    global_batch = make_global_batch(local, mesh)
    for key, value in global_batch.items():
        assert isinstance(value, jax.Array)
        assert value.sharding.spec[0] == ("data", "fsdp")
        np.testing.assert_array_equal(np.asarray(value), local[key])
        assert len(value.addressable_shards) == 8
        assert value.addressable_shards[0].data.shape[0] == 1
    loader = create_loader(config, source, tokenizer, mesh=mesh)
    assert isinstance(next(loader)["input_ids"], jax.Array)
    with pytest.raises(ValueError, match="divisible"):
        make_global_batch({"x": np.zeros((4, 2))}, mesh)


def test_read_ahead_keeps_state_and_order(source, tokenizer):
    config = dataclasses.replace(CONFIG, num_epochs=1, global_batch_size=1)
    plain = [b["input_ids"] for b in Loader(build_dataset(config, source, tokenizer))]
    assert len(plain) >= 3
    loader = Loader(build_dataset(config, source, tokenizer))
    np.testing.assert_array_equal(next(loader)["input_ids"], plain[0])
    loader.read_ahead()
    loader.read_ahead()  # a second call reads nothing more
    state = loader.get_state()  # a checkpoint now must resume at the batch read ahead
    np.testing.assert_array_equal(next(loader)["input_ids"], plain[1])
    resumed = Loader(build_dataset(config, source, tokenizer))
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["input_ids"], plain[1])
    rest = []
    while True:
        loader.read_ahead()
        batch = next(loader, None)
        if batch is None:
            break
        rest.append(batch["input_ids"])
    assert len(rest) == len(plain) - 2
    for got, want in zip(rest, plain[2:]):
        np.testing.assert_array_equal(got, want)
    loader.read_ahead()  # past the end: `next` still stops
    with pytest.raises(StopIteration):
        next(loader)


def test_estimate_rows(source, tokenizer):
    rows = sum(
        b["input_ids"].shape[0]
        for b in create_loader(dataclasses.replace(CONFIG, global_batch_size=1), source, tokenizer)
    )
    estimate = estimate_rows(CONFIG, source, tokenizer)
    assert abs(estimate - rows) <= 0.2 * rows
    assert estimate_rows(dataclasses.replace(CONFIG, batching="pad"), source, tokenizer) == len(source)


def test_config_validation():
    with pytest.raises(ValueError, match="batching"):
        DataConfig(batching="bucket")
    with pytest.raises(ValueError, match="on_error"):
        DataConfig(on_error="ignore")
    with pytest.raises(ValueError, match="image_seq_length"):
        DataConfig(image_seq_length=600, max_length=512)
    with pytest.raises(ValueError, match="read_threads and read_buffer"):
        DataConfig(read_buffer=0)
    with pytest.raises(ValueError, match="read_threads and read_buffer"):
        DataConfig(read_threads=0)
