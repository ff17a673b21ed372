"""anyres preprocessing and token counts against transformers' LLaVA-NeXT processor (PIL backend)."""

import numpy as np
import pytest
from PIL import Image
from transformers import LlavaNextProcessor
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from llava_jax.config import AnyresConfig, select_best_resolution
from llava_jax.data.image import image_hw, prepare_pixels, preprocess_image, preprocess_images
from llava_jax.presets import V16_PINPOINTS
from tests.data.helpers import photos

# (height, width): landscape, portrait, square, tiny, extreme ratios, larger than every pinpoint.
SIZES = [
    (480, 640),
    (640, 480),
    (336, 336),
    (20, 31),
    (1, 1),
    (17, 900),
    (900, 17),
    (1500, 2200),
    (672, 1008),
    (333, 1001),
    (700, 699),
    (1080, 1920),
]
TINY_PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]


def hf_processor(size=336, pinpoints=V16_PINPOINTS):
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=[list(p) for p in pinpoints],
    )


def random_image(hw, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, hw + (3,), dtype=np.uint8))


@pytest.mark.parametrize("hw", SIZES)
def test_tiles_match_hf(hw):
    pil = random_image(hw, hw[0] * 7 + hw[1])
    out = hf_processor()(pil, return_tensors="np")
    ours = preprocess_image(pil, mode="anyres", grid_pinpoints=V16_PINPOINTS)
    spec = AnyresConfig(V16_PINPOINTS)
    n = spec.num_tiles(*hw)
    assert ours.shape == (n, 336, 336, 3) and ours.dtype == np.float32
    reference = out["pixel_values"][0].transpose(0, 2, 3, 1)
    assert reference.shape[0] == n
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)
    assert tuple(out["image_sizes"][0]) == hw == image_hw(pil)


def test_photos_and_tiny_tiles_match_hf():
    for k, photo in enumerate(photos()):
        pil = Image.fromarray(photo)
        reference = hf_processor()(pil, return_tensors="np")["pixel_values"][0].transpose(0, 2, 3, 1)
        np.testing.assert_allclose(
            preprocess_image(photo, mode="anyres", grid_pinpoints=V16_PINPOINTS), reference, atol=1e-5
        )
        small = hf_processor(28, TINY_PINPOINTS)(pil, return_tensors="np")["pixel_values"][0]
        ours = preprocess_image(pil, mode="anyres", size=28, grid_pinpoints=TINY_PINPOINTS)
        np.testing.assert_allclose(ours, small.transpose(0, 2, 3, 1), atol=1e-5, err_msg=f"photo {k}")


def test_best_resolution_matches_hf():
    rng = np.random.default_rng(0)
    pins = [list(p) for p in V16_PINPOINTS]
    for h, w in [*SIZES, *rng.integers(1, 3000, size=(300, 2)).tolist()]:
        assert select_best_resolution(h, w, V16_PINPOINTS) == tuple(hf_select_best_resolution((h, w), pins))


@pytest.fixture(scope="module")
def next_processor():
    """transformers' whole LLaVA-NeXT processor (the synthetic tokenizer has `<image>`)."""
    from llava_jax.demo.synthetic.tokenizer import synthetic_tokenizer

    return LlavaNextProcessor(
        image_processor=hf_processor(28, TINY_PINPOINTS),
        tokenizer=synthetic_tokenizer(),
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def test_token_counts_match_hf_processor(next_processor):
    """The placeholders transformers' processor writes for each size = `AnyresConfig.num_tokens`."""
    spec = AnyresConfig(TINY_PINPOINTS, tile_size=28, patch_size=14, tokens_per_tile=4)
    image_id = next_processor.image_token_id
    rng = np.random.default_rng(1)
    sizes = [*SIZES, *rng.integers(1, 400, size=(40, 2)).tolist()]
    images = [random_image((int(h), int(w)), i) for i, (h, w) in enumerate(sizes)]
    out = next_processor(images=images, text=["<image> hi"] * len(images), return_tensors="np", padding=True)
    counts = (out["input_ids"] == image_id).sum(axis=1)
    assert counts.tolist() == [spec.num_tokens(int(h), int(w)) for h, w in sizes]
    hf_counts = next_processor._get_num_multimodal_tokens(image_sizes=sizes, size={"shortest_edge": 28})
    assert hf_counts.num_image_tokens == counts.tolist()


def test_grid_and_unpad_match_hf_model(torch_cpu):
    """At CLIP-336 scale: the grid and kept region = the model's `get_anyres_image_grid_shape` + `unpad_image`."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    spec = AnyresConfig(V16_PINPOINTS)
    pins = [list(p) for p in V16_PINPOINTS]
    rng = np.random.default_rng(2)
    for h, w in [*SIZES, *rng.integers(1, 2500, size=(200, 2)).tolist()]:
        rows, cols = get_anyres_image_grid_shape((h, w), pins, 336)
        assert spec.grid_shape(h, w) == (rows, cols)
        kept = unpad_image(torch_cpu.zeros(1, rows * 24, cols * 24), (h, w)).shape[1:]
        r0, r1, c0, c1 = spec.kept_region(h, w)
        assert (r1 - r0, c1 - c0) == tuple(kept)
        assert spec.num_tokens(h, w) == 576 + kept[0] * (kept[1] + 1)


def test_flat_counts_and_limits():
    flat = AnyresConfig(V16_PINPOINTS, merge_type="flat")
    assert flat.num_tokens(480, 640) == (1 + 4) * 576
    assert flat.num_tokens(300, 1000) == (1 + 3) * 576
    unpad = AnyresConfig(V16_PINPOINTS)
    assert unpad.max_tiles == flat.max_tiles == 5
    assert unpad.max_tokens == 576 + 48 * 49 == unpad.num_tokens(672, 672)
    assert all(unpad.num_tokens(h, w) <= unpad.max_tokens for h, w in SIZES)


def test_uint8_tiles_and_image_hw_from_files(tmp_path):
    pil = random_image((20, 60), 3)
    path = tmp_path / "x.png"
    pil.save(path)
    assert image_hw(str(path)) == (20, 60) == image_hw(path.read_bytes())
    tiles = prepare_pixels(str(path), mode="anyres", size=28, grid_pinpoints=TINY_PINPOINTS)
    assert tiles.dtype == np.uint8 and tiles.shape == (4, 28, 28, 3)  # the 1x3 grid + the global view


def test_anyres_errors(tmp_path):
    with pytest.raises(ValueError, match="needs grid_pinpoints"):
        preprocess_image(random_image((5, 5), 0), mode="anyres")
    with pytest.raises(ValueError, match="per anyres image"):
        preprocess_images([random_image((5, 5), 0)], mode="anyres")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty image file"):
        image_hw(str(empty))
    with pytest.raises(FileNotFoundError):
        image_hw(str(tmp_path / "missing.png"))
