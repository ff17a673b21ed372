"""One image rule: transparent and EXIF-rotated images give the same pixels however they are passed.

Default: LLaVA's `Image.open(path).convert('RGB')` (alpha dropped, EXIF ignored);
`alpha="white"`: transformers' composite on white; `exif=True`: transformers'
orientation. Each rule holds for paths, bytes, PIL images and arrays alike.
"""

import io

import numpy as np
import pytest
from PIL import Image

from llava_jax.data.image import expand_to_square, load_image, prepare_pixels, preprocess_image
from tests.data.test_image import hf_pixels


def _rgba(seed=0, hw=(30, 44)):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, hw + (4,), dtype=np.uint8)
    array[: hw[0] // 2, :, 3] = 0  # half fully transparent: dropping and compositing differ there
    return array


def _transparent_images():
    """name -> PIL image carrying transparency in each way PIL stores it."""
    rgba = Image.fromarray(_rgba())
    palette = rgba.convert("RGB").quantize(16)
    palette.info["transparency"] = 3  # one palette index transparent (tRNS)
    keyed = rgba.convert("RGB")
    keyed.info["transparency"] = tuple(int(v) for v in np.asarray(keyed)[0, 0])  # RGB colour key
    return {"RGBA": rgba, "LA": rgba.convert("LA"), "P+tRNS": palette, "RGB+key": keyed}


def _encoded(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", ["RGBA", "LA", "P+tRNS", "RGB+key"])
@pytest.mark.parametrize("alpha", ["drop", "white"])
def test_same_pixels_from_path_bytes_pil_and_array(tmp_path, name, alpha):
    image = _transparent_images()[name]
    data = _encoded(image)
    path = tmp_path / f"{name}.png"
    path.write_bytes(data)
    reopened = Image.open(io.BytesIO(data))  # what a dataset reader hands over
    assert reopened.mode == image.mode
    inputs = {"path": str(path), "bytes": data, "pil": image, "reopened": reopened}
    if name == "RGBA":
        inputs["array"] = _rgba()
    pixels = {k: prepare_pixels(v, mode="pad", size=56, alpha=alpha) for k, v in inputs.items()}
    for kind, value in pixels.items():
        np.testing.assert_array_equal(value, pixels["path"], err_msg=f"{name} as {kind} ({alpha})")


@pytest.mark.parametrize("name", ["RGBA", "LA", "P+tRNS", "RGB+key"])
def test_default_is_llavas_convert_rgb_and_white_is_transformers(tmp_path, name):
    from transformers.image_transforms import convert_to_rgb

    image = _transparent_images()[name]
    path = tmp_path / "x.png"
    path.write_bytes(_encoded(image))
    llava = Image.open(path).convert("RGB")  # LLaVA's training and evaluation
    np.testing.assert_allclose(preprocess_image(str(path)), hf_pixels(expand_to_square(llava)), atol=1e-5)
    np.testing.assert_allclose(preprocess_image(image), hf_pixels(expand_to_square(llava)), atol=1e-5)
    composite = Image.fromarray(convert_to_rgb(image, return_numpy=True))
    white = preprocess_image(str(path), alpha="white")
    np.testing.assert_allclose(white, hf_pixels(expand_to_square(composite)), atol=1e-5)
    if name != "RGB+key":  # a fully transparent half: the two rules really differ
        assert np.abs(white - preprocess_image(str(path))).max() > 0.1


def test_exif_rule_is_the_same_for_files_and_pil(tmp_path):
    array = np.random.default_rng(4).integers(0, 256, (20, 36, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    Image.fromarray(array).save(path, exif=exif.tobytes(), quality=95)
    opened = Image.open(path)
    for flag, size in ((False, (36, 20)), (True, (20, 36))):
        assert load_image(str(path), exif=flag).size == size
        np.testing.assert_array_equal(
            prepare_pixels(str(path), size=28, exif=flag), prepare_pixels(opened, size=28, exif=flag)
        )


def test_unknown_alpha_rule():
    with pytest.raises(ValueError, match="alpha must be one of"):
        preprocess_image(_rgba(), alpha="black")
