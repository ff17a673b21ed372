"""The grain pipeline with high-resolution (anyres) images: per-image token counts, tiles, grids."""

import dataclasses

import numpy as np
import pytest

from llava_jax.config import AnyresConfig
from llava_jax.data.encode import DataError, EncodeFn
from llava_jax.data.image import image_hw, preprocess_image
from llava_jax.data.pipeline import DataConfig, create_loader
from llava_jax.data.sources import JsonSource
from tests.data import helpers

IMG = -200
SPEC = AnyresConfig(((28, 56), (56, 28), (56, 56), (84, 28), (28, 84)), tile_size=28, patch_size=14, tokens_per_tile=4)
CONFIG = DataConfig(
    template="vicuna_v1",
    image_mode="anyres",
    anyres=SPEC,
    image_size=28,
    image_seq_length=4,
    image_token_index=IMG,
    max_length=256,
    global_batch_size=4,
    batching="pack",
    max_images_per_row=3,
    pack_window=12,
    pad_multiple=32,
    seed=2,
)


@pytest.fixture(scope="module")
def hd_dataset(tmp_path_factory):
    """16 stage-2 examples whose images (w, h) take every grid: wide, tall, small, large."""
    sizes = ((90, 30), (30, 90), (20, 24), (300, 220), (120, 40))
    return helpers.write_dataset(str(tmp_path_factory.mktemp("hd")), n=16, image_sizes=sizes)


def test_placeholders_follow_each_image_size(hd_dataset, tokenizer):
    source = JsonSource(*hd_dataset)
    encode = EncodeFn(tokenizer, CONFIG)
    counts = set()
    for i in range(len(source)):
        example = source[i]
        out = encode(example)
        n = int((out["input_ids"] == IMG).sum())
        if example.get("image") is None:
            assert n == 0 and "image_hw" not in out
            continue
        hw = image_hw(example["image"])
        assert tuple(out["image_hw"]) == hw and n == SPEC.num_tokens(*hw)
        counts.add(n)
    assert len(counts) >= 4


@pytest.mark.parametrize("batching", ["pack", "pad"])
def test_batches_carry_tiles_and_grids(hd_dataset, tokenizer, batching):
    source = JsonSource(*hd_dataset)
    config = dataclasses.replace(CONFIG, batching=batching)
    by_ids = {}
    encode = EncodeFn(tokenizer, config)
    for i in range(len(source)):
        out = encode(source[i])
        by_ids[tuple(out["input_ids"][1:].tolist())] = (source[i], out)
    images_seen = 0
    for batch in create_loader(config, source, tokenizer):
        m = config.max_images_per_row if batching == "pack" else 1
        assert batch["images"].shape == (4, m, SPEC.max_tiles, 28, 28, 3) and batch["images"].dtype == np.float32
        assert batch["image_grids"].shape == (4, m, 6) and batch["image_grids"].dtype == np.int32
        for b in range(4):
            grids, seg = batch["image_grids"][b], batch["segment_ids"][b]
            valid = batch["image_mask"][b]
            assert (grids[~valid] == 0).all() and (grids[valid, 0] > 0).all()
            # The row's placeholders are exactly its images' token counts, in order.
            slot = 0
            for s in range(1, int(seg.max()) + 1):
                ids = batch["input_ids"][b][seg == s]
                example, out = by_ids[tuple(ids[1:].tolist())]
                if example.get("image") is None:
                    continue
                hw = tuple(out["image_hw"])
                assert tuple(grids[slot]) == SPEC.image_grid(*hw)
                assert (ids == IMG).sum() == SPEC.num_tokens(*hw)
                k = SPEC.num_tiles(*hw)
                want = preprocess_image(example["image"], mode="anyres", size=28, grid_pinpoints=SPEC.grid_pinpoints)
                np.testing.assert_array_equal(batch["images"][b, slot, :k], want)
                slot += 1
                images_seen += 1
            assert slot == int(valid.sum())
    assert images_seen >= 6


def test_bad_images_are_skipped_with_their_reason(hd_dataset, tokenizer, tmp_path):
    source = JsonSource(*hd_dataset)
    example = dict(source[0])
    encode = EncodeFn(tokenizer, CONFIG)
    missing = {**example, "image": str(tmp_path / "gone.jpg")}
    assert encode(missing) == {"id": example["id"], "_skip": "missing_image"}
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image")
    assert encode({**example, "image": str(garbage)})["_skip"] == "corrupt_image"
    with pytest.raises(DataError, match=r"corrupt_image"):
        EncodeFn(tokenizer, dataclasses.replace(CONFIG, on_error="strict"))({**example, "image": str(garbage)})


def test_image_changed_since_counting_is_blanked(hd_dataset, tokenizer, tmp_path):
    """Decoding checks the image still has the size its placeholders were counted for."""
    from PIL import Image

    from llava_jax.data.packing import DecodeImages, assemble_row

    source = JsonSource(*hd_dataset)
    out = EncodeFn(tokenizer, CONFIG)(source[0])
    path = tmp_path / "swapped.jpg"
    Image.new("RGB", (50, 50)).save(path)
    row = assemble_row([{**out, "image": str(path)}], 256)
    decoded = DecodeImages(max_images=2, mode="anyres", size=28, anyres=SPEC)(row)
    assert decoded["_skipped"] == [(out["id"], "corrupt_image")] and not decoded["image_mask"].any()
    assert (decoded["segment_ids"] == 0).all() and (decoded["image_grids"] == 0).all()


def test_anyres_mode_needs_the_geometry():
    with pytest.raises(ValueError, match="go together"):
        dataclasses.replace(CONFIG, anyres=None)
    with pytest.raises(ValueError, match="go together"):
        dataclasses.replace(CONFIG, image_mode="pad")
    with pytest.raises(ValueError, match="anyres tiles are 28px but image_size is 336"):
        dataclasses.replace(CONFIG, image_size=336)
