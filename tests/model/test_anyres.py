"""anyres (LLaVA-1.5-HD / LLaVA-NeXT) logits against transformers' LlavaNextForConditionalGeneration."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

import llava_jax
from llava_jax.api import Llava
from llava_jax.model.anyres import merge_sources, splice_index
from tests.hf_fixtures import hf_llava_next, hf_next_image_processor, save

TOL = 1e-4
# (height, width): landscape, portrait, small, larger than every pinpoint, square, extreme ratio.
SIZES = [(30, 70), (90, 40), (10, 12), (200, 150), (56, 56), (9, 120)]


@pytest.fixture(scope="module")
def next_pair(tmp_path_factory, torch_cpu):
    """(HF LlavaNext, its processor, the same weights loaded by `llava_jax.load`)."""
    hf = hf_llava_next(seed=1)
    return hf, hf_next_image_processor(hf.config), llava_jax.load(save(hf, str(tmp_path_factory.mktemp("next"))))


def images_of(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def rows_with_images(config, counts, rows, *, pad_tail=0, seed=0):
    """input_ids int64[B, T] holding each row's images' placeholders (2 text tokens before, 1 between)."""
    rng = np.random.default_rng(seed)
    length = max(sum(counts[i] + 1 for i in r) for r in rows) + 4 + pad_tail
    ids = rng.integers(3, config.text_config.vocab_size - 1, size=(len(rows), length))
    mask = np.ones(ids.shape, np.int64)
    for b, row in enumerate(rows):
        pos = 2
        for i in row:
            ids[b, pos : pos + counts[i]] = config.image_token_index
            pos += counts[i] + 1
        mask[b, pos + 2 :] = 0 if pad_tail else 1
    return ids, mask


def hf_logits(hf, ids, pixels, sizes, mask, torch):
    with torch.no_grad():
        return hf(
            input_ids=torch.tensor(ids),
            pixel_values=torch.tensor(pixels),
            image_sizes=torch.tensor(sizes),
            attention_mask=torch.tensor(mask),
        ).logits.numpy()


def test_config_read_from_llava_next(next_pair):
    _, _, model = next_pair
    c = model.config
    assert c.image_aspect_ratio == "anyres" and c.patch_merge_type == "spatial_unpad" and c.uses_image_newline
    assert c.image_grid_pinpoints == ((28, 56), (56, 28), (56, 56), (84, 28), (28, 84))
    assert c.anyres.max_tiles == 5 and model.params["projector"]["image_newline"].shape == (64,)


def test_logits_match_hf_with_mixed_sizes(next_pair, torch_cpu):
    """Rows with 2, 1, 0 and 3 images of different sizes and grids, right padding in some rows."""
    hf, proc, model = next_pair
    out = proc(images_of(SIZES), return_tensors="np")
    pixels, sizes = out["pixel_values"], out["image_sizes"]
    counts = [model.config.image_tokens(h, w) for h, w in SIZES]
    assert len(set(counts)) == 5 and counts[-1] == 4  # (9, 120): the unpad keeps no row, the base view only
    ids, mask = rows_with_images(hf.config, counts, [[0, 1], [2], [], [3, 4, 5]], pad_tail=3)
    ref = hf_logits(hf, ids, pixels, sizes, mask, torch_cpu)
    ours = model.logits(ids, pixels, mask, image_sizes=sizes)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=TOL, rtol=0)


def test_one_compile_for_every_image_size(next_pair):
    """Static shapes: tiles padded to the largest grid, so sizes never change what is compiled."""
    from llava_jax.api import _forward_logits

    hf, proc, model = next_pair
    before = None
    for k, size in enumerate([(30, 70), (200, 150), (10, 12)]):
        out = proc(images_of([size], seed=k), return_tensors="np")
        n = model.config.image_tokens(*size)
        ids = np.full((1, 64), 5, np.int64)
        ids[0, 2 : 2 + n] = hf.config.image_token_index
        model.logits(ids, out["pixel_values"], image_sizes=out["image_sizes"])
        if before is None:
            before = _forward_logits._cache_size()
    assert _forward_logits._cache_size() == before


def test_flat_merge_is_the_tiles_one_after_another(next_pair):
    """`flat`: an image's tokens are its tiles' tokens in order, exactly as if each tile were an image
    of the plain (pad-mode) model: an independent path through the same weights."""
    _, proc, model = next_pair
    flat = dataclasses.replace(model.config, patch_merge_type="flat")
    plain = dataclasses.replace(
        model.config, image_aspect_ratio="pad", image_grid_pinpoints=(), patch_merge_type="flat"
    )
    params = {**model.params, "projector": {k: v for k, v in model.params["projector"].items() if k != "image_newline"}}
    sizes = [(30, 70), (200, 150)]
    out = proc(images_of(sizes, seed=3), return_tensors="np")
    tiles = [flat.anyres.num_tiles(h, w) for h, w in sizes]
    counts = [flat.image_tokens(h, w) for h, w in sizes]
    assert counts == [t * 4 for t in tiles]
    ids = np.full((1, sum(counts) + 6), 7, np.int64)
    ids[0, 3 : 3 + sum(counts)] = model.config.image_token_index
    ours = Llava(flat, params).logits(ids, out["pixel_values"], image_sizes=out["image_sizes"])
    per_tile = np.concatenate([out["pixel_values"][i, : tiles[i]] for i in range(2)])
    ref = Llava(plain, params).logits(ids, per_tile)
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def test_merge_index_layout():
    """spatial_unpad merge positions for a 2x1 grid of 2x2-patch tiles whose padding drops a column each side."""
    from llava_jax.config import AnyresConfig

    spec = AnyresConfig(((56, 28),), tile_size=28, patch_size=14, tokens_per_tile=4)
    grids = np.array([[2, 1, 0, 4, 0, 2], [2, 1, 0, 4, 1, 1], [0, 0, 0, 0, 0, 0]], np.int32)
    src = np.asarray(merge_sources(grids, spec, 3))
    nl = 3 * 4  # the newline after 3 tiles of 4 tokens
    # Base tokens 0-3, then map rows of [tile 1: 4, 5 | 6, 7], [tile 2: 8, 9 | 10, 11], each + newline.
    assert src[0, :16].tolist() == [0, 1, 2, 3, 4, 5, nl, 6, 7, nl, 8, 9, nl, 10, 11, nl]
    assert src[1, :12].tolist() == [0, 1, 2, 3, nl, nl, nl, nl, 0, 0, 0, 0]  # no kept column: newlines only
    assert not src[2].any()


def test_splice_index_skips_empty_slots():
    is_image = np.array([[0, 1, 1, 1, 0, 1, 1, 0]], bool)
    lengths = np.array([[2, 0, 3, 0]], np.int32)  # an empty slot between two images, one at the end
    idx = np.asarray(splice_index(is_image, lengths, 5))[0]
    assert idx[is_image[0]].tolist() == [0, 1, 10, 11, 12]


def test_inputs_that_disagree_are_errors(next_pair):
    hf, proc, model = next_pair
    out = proc(images_of([(30, 70)]), return_tensors="np")
    n = model.config.image_tokens(30, 70)
    ids = np.full((1, n + 4), 5, np.int64)
    ids[0, 1 : 1 + n] = hf.config.image_token_index
    with pytest.raises(ValueError, match="needs image_sizes"):
        model.logits(ids, out["pixel_values"])
    short = ids.copy()
    short[0, 1] = 5  # one placeholder fewer than the image's size gives
    with pytest.raises(ValueError, match=rf"row 0 has {n - 1} image placeholders but .* sizes \[\(30, 70\)\] make {n}"):
        model.logits(short, out["pixel_values"], image_sizes=out["image_sizes"])
    with pytest.raises(
        ValueError, match=r"image 0 \(30x70\) needs 4 tiles of \[3, 28, 28\], pixel_values has \(2, 3, 28, 28\)"
    ):
        model.logits(ids, out["pixel_values"][:, :2], image_sizes=out["image_sizes"])
