"""Hostile inputs to the data readers end in a clear error naming the file, or a skip with a precise reason."""

import io
import struct
import zlib

import pytest
from PIL import Image

from llava_jax.data.encode import DataError, validate_turns
from llava_jax.data.image import ImageTooLarge, load_image, preprocess_image, set_max_image_pixels
from llava_jax.data.sources import JsonSource


def test_deeply_nested_json_names_the_file(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)  # a list whose first example is nested 99,999 deep
    with pytest.raises(ValueError, match=r"deep\.json: the JSON value at byte 1 is nested too deeply"):
        JsonSource(str(path))
    first = '[{"id": "a", "conversations": []}, '
    path.write_text(first + "[" * 100_000 + "]" * 100_000 + "]")
    with pytest.raises(ValueError, match=rf"deep\.json: the JSON value at byte {len(first)} is nested too deeply"):
        JsonSource(str(path))


def test_image_marker_in_the_answer_is_named_even_beside_the_question():
    example = {
        "id": "both",
        "image": "x.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "It is <image>."},
        ],
    }
    with pytest.raises(DataError) as info:
        validate_turns(example, None)
    assert info.value.reason == "image_token_in_answer" and "answer contains <image>" in str(info.value)
    # Two markers in questions stay `multiple_image_tokens`.
    example["conversations"][1]["value"] = "A cat."
    example["conversations"] += [{"from": "human", "value": "<image> again?"}, {"from": "gpt", "value": "Yes."}]
    with pytest.raises(DataError) as info:
        validate_turns(example, None)
    assert info.value.reason == "multiple_image_tokens"


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming `width x height` pixels (PIL refuses it before decoding any data)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_is_a_clear_error_with_the_way_to_raise_the_limit(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(huge_png(20_000, 20_000))  # 400 megapixels in 70 bytes
    with pytest.raises(ImageTooLarge, match=r"huge\.png: Image size \(400000000 pixels\) exceeds limit") as info:
        load_image(str(path))
    assert "--max-image-pixels" in str(info.value) and info.value.reason == "image_too_large"
    with pytest.raises(ImageTooLarge):
        preprocess_image(path.read_bytes())  # the same for encoded bytes (packed records)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_set_max_image_pixels_moves_the_limit(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30)).save(path)
    saved = Image.MAX_IMAGE_PIXELS
    try:
        set_max_image_pixels(1000)
        with pytest.raises(ImageTooLarge, match="1200 pixels"):
            load_image(str(path))
        set_max_image_pixels(1200)
        assert load_image(str(path)).size == (40, 30)
        with pytest.raises(ValueError, match="at least 1"):
            set_max_image_pixels(0)
    finally:
        Image.MAX_IMAGE_PIXELS = saved
