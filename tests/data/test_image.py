"""CLIP preprocessing against transformers' PIL-backend CLIPImageProcessor."""

import io

import numpy as np
import pytest
from PIL import Image
from transformers.image_utils import load_image as hf_load_image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava_jax.data.image import (
    CLIP_MEAN,
    CLIP_STD,
    PAD_COLOR,
    expand_to_square,
    load_image,
    preprocess_image,
    preprocess_images,
)
from tests.data.helpers import photos


def hf_processor(size=336):
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def hf_pixels(image, size=336):
    """HF's output, channels last."""
    out = hf_processor(size)(image, return_tensors="np")["pixel_values"][0]
    return out.transpose(1, 2, 0)


def test_constants_match_hf_and_llava():
    proc = hf_processor()
    np.testing.assert_allclose(CLIP_MEAN, proc.image_mean)
    np.testing.assert_allclose(CLIP_STD, proc.image_std)
    # The LLaVA repo truncates int(x * 255).
    assert PAD_COLOR == (122, 116, 104)


@pytest.mark.parametrize("mode", ["square", "pad"])
@pytest.mark.parametrize(
    "hw",
    [(375, 500), (500, 375), (100, 337), (17, 900), (336, 336), (3, 2), (1000, 999)],
)
def test_random_images_match_hf(mode, hw):
    rng = np.random.default_rng(hw[0] * 7 + hw[1])
    pil = Image.fromarray(rng.integers(0, 256, hw + (3,), dtype=np.uint8))
    reference = hf_pixels(pil if mode == "square" else expand_to_square(pil))
    ours = preprocess_image(pil, mode=mode)
    assert ours.shape == (336, 336, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["square", "pad"])
def test_real_photos_match_hf(mode):
    for photo in photos():
        pil = Image.fromarray(photo)
        reference = hf_pixels(pil if mode == "square" else expand_to_square(pil))
        np.testing.assert_allclose(preprocess_image(photo, mode=mode), reference, atol=1e-5)


def test_other_size():
    pil = Image.fromarray(photos()[0])
    np.testing.assert_allclose(preprocess_image(pil, mode="square", size=224), hf_pixels(pil, 224), atol=1e-5)


def test_pad_is_centred_on_mean_colour():
    pil = Image.new("RGB", (40, 10), (255, 0, 0))
    square = expand_to_square(pil)
    assert square.size == (40, 40)
    pixels = np.asarray(square)
    assert tuple(pixels[0, 0]) == PAD_COLOR and tuple(pixels[-1, -1]) == PAD_COLOR
    assert (pixels[15:25] == (255, 0, 0)).all()
    assert tuple(pixels[14, 0]) == PAD_COLOR and tuple(pixels[25, 0]) == PAD_COLOR
    # Tall images are padded left and right.
    tall = np.asarray(expand_to_square(Image.new("RGB", (10, 41), (0, 255, 0))))
    assert tall.shape == (41, 41, 3) and (tall[:, 15:25] == (0, 255, 0)).all()
    assert tuple(tall[0, 14]) == PAD_COLOR


@pytest.mark.parametrize("pil_mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16"])
def test_pil_modes_as_hf_processor(pil_mode):
    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 256, (60, 90, 4), dtype=np.uint8), "RGBA")
    if pil_mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (60, 90), dtype=np.uint16))
    else:
        image = base.convert(pil_mode)
    for mode in ("square", "pad"):
        ours = preprocess_image(image, mode=mode, alpha="white")  # transformers' composite rule
        if mode == "pad":
            # The processor's RGB conversion first, then LLaVA's padding.
            from transformers.image_transforms import convert_to_rgb

            rgb = Image.fromarray(convert_to_rgb(image, return_numpy=True))
            reference = hf_pixels(expand_to_square(rgb))
        else:
            reference = hf_pixels(image)
        np.testing.assert_allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("shape", [(50, 70), (50, 70, 1), (50, 70, 3), (50, 70, 4)])
def test_uint8_arrays(shape):
    array = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    pil = Image.fromarray(array[..., 0] if shape[-1:] == (1,) else array)
    np.testing.assert_array_equal(preprocess_image(array), preprocess_image(pil))


def test_files_bytes_and_exif_as_hf_load_image(tmp_path):
    photo = Image.fromarray(photos()[1][:300, :500])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    photo.save(path, exif=exif.tobytes(), quality=95)
    assert load_image(str(path)).size == (500, 300)  # LLaVA's rule: EXIF orientation ignored
    loaded = load_image(str(path), exif=True)
    assert loaded.size == (300, 500)  # transposed
    for mode in ("square", "pad"):
        hf = hf_load_image(str(path))
        reference = hf_pixels(hf if mode == "square" else expand_to_square(hf))
        np.testing.assert_allclose(preprocess_image(str(path), mode=mode, exif=True), reference, atol=1e-5)
        np.testing.assert_allclose(preprocess_image(path.read_bytes(), mode=mode, exif=True), reference, atol=1e-5)
    # RGBA files: HF `load_image` converts (drops alpha), as the LLaVA repo's `.convert("RGB")`.
    rgba = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 30, 4), dtype=np.uint8))
    rgba.save(tmp_path / "a.png")
    np.testing.assert_allclose(
        preprocess_image(str(tmp_path / "a.png")),
        hf_pixels(expand_to_square(rgba.convert("RGB"))),
    )


def test_batch_of_images():
    out = preprocess_images([photos()[0], photos()[1]], mode="pad", size=64)
    assert out.shape == (2, 64, 64, 3)
    assert preprocess_images([], size=64).shape == (0, 64, 64, 3)


def test_bad_inputs(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        preprocess_image(str(empty))
    with pytest.raises(ValueError, match="empty"):
        preprocess_image(b"")
    buf = io.BytesIO()
    Image.fromarray(photos()[0]).save(buf, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(OSError):
        preprocess_image(str(truncated))
    text = tmp_path / "not_an_image.jpg"
    text.write_text("hello")
    with pytest.raises(OSError):
        preprocess_image(str(text))
    with pytest.raises(FileNotFoundError):
        preprocess_image(str(tmp_path / "missing.jpg"))
    with pytest.raises(ValueError, match="mode"):
        preprocess_image(photos()[0], mode="crop")
    with pytest.raises(TypeError):
        preprocess_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="zero-sized"):
        preprocess_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="zero-sized"):
        preprocess_image(Image.new("RGB", (0, 5)))
