"""CLIP image preprocessing for LLaVA-1.5 in numpy + PIL (no torch).

Matches transformers' PIL-backend `CLIPImageProcessor` for the CLIP ViT-L/14-336
settings: resize the shortest side to `size` (bicubic), centre crop, rescale by
1/255, normalise with the CLIP mean/std. LLaVA's `pad` aspect mode first pastes
the image centred on a square filled with the mean colour (reference
`expand2square`); `square` is the CLIP processor alone (stage 1).

`anyres` (LLaVA-1.5-HD / LLaVA-NeXT) matches transformers' PIL-backend
`LlavaNextImageProcessor`: the image is scaled (aspect kept, bicubic) into the
best of `grid_pinpoints`, centred on black padding, cut into `size` tiles row
by row, and preceded by a global view (the whole image resized to `size` x
`size`, aspect not kept); each tile is then normalised like a CLIP crop.

One rule turns any input into RGB, the same for paths, encoded bytes, PIL
images and arrays, so an image gives the same pixels however it is passed:

- default (`alpha="drop"`, `exif=False`): LLaVA's training and evaluation,
  `Image.open(path).convert("RGB")`: transparency is dropped (RGBA/LA/PA lose
  their alpha, a palette or colour-key transparency is ignored) and EXIF
  orientation is not applied;
- `alpha="white"`: transparency composited on white, as transformers' CLIP
  processor converts in-memory images (`convert_to_rgb`);
- `exif=True`: EXIF orientation applied first, as transformers' `load_image`
  does for files.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image, ImageOps

from llava_jax.config import select_best_resolution

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The reference fills with `tuple(int(x * 255) for x in mean)`: truncation, not rounding.
PAD_COLOR = tuple(int(x * 255) for x in CLIP_MEAN)  # (122, 116, 104)
MODES = ("pad", "square", "anyres")

ImageInput = Image.Image | np.ndarray | str | os.PathLike | bytes


def _normalize_table(mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """float32[3, 256]: the normalised value of each uint8 level per channel.

    Computed with HF's exact arithmetic (rescale in float64, cast to float32,
    then `(x - mean) / std` in float32), so a table lookup is bit-identical to
    the processor and cheaper than the arithmetic on every pixel.
    """
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    return ((levels[None, :] - mean32) / std32).astype(np.float32)


_TABLE = _normalize_table()


ALPHA_RULES = ("drop", "white")


def _check_rule(alpha: str) -> None:
    if alpha not in ALPHA_RULES:
        raise ValueError(f"alpha must be one of {ALPHA_RULES}, got {alpha!r}")


class ImageTooLarge(ValueError):
    """An image with more pixels than PIL's decompression-bomb limit (see `set_max_image_pixels`)."""

    reason = "image_too_large"


def set_max_image_pixels(pixels: int) -> None:
    """Accept images of up to `pixels` pixels (process-wide; PIL refuses above 2 x `Image.MAX_IMAGE_PIXELS`)."""
    if pixels < 1:
        raise ValueError(f"max image pixels must be at least 1, got {pixels}")
    Image.MAX_IMAGE_PIXELS = -(-int(pixels) // 2)


def _open(source: str | os.PathLike | bytes) -> Image.Image:
    """Decode a file or encoded bytes (eagerly, so truncated data fails here)."""
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ValueError("empty image data (0 bytes)")
            image = Image.open(io.BytesIO(bytes(source)))
        else:
            if os.path.getsize(source) == 0:
                raise ValueError(f"empty image file (0 bytes): {os.fspath(source)}")
            image = Image.open(source)
        image.load()
    except Image.DecompressionBombError as e:
        where = f"{os.fspath(source)}: " if isinstance(source, (str, os.PathLike)) else ""
        raise ImageTooLarge(
            f"{where}{e} Raise the limit with `llava-jax chat --max-image-pixels N` "
            f"(in Python: llava_jax.data.image.set_max_image_pixels(N))"
        ) from None
    return image


def _has_transparency(image: Image.Image) -> bool:
    return "A" in image.getbands() or image.info.get("transparency") is not None


def _convert(image: Image.Image, *, alpha: str, exif: bool) -> Image.Image:
    """The one RGB rule (module docstring) applied to a decoded PIL image."""
    if exif:
        image = ImageOps.exif_transpose(image)
    if alpha == "white" and _has_transparency(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    _check_size(image)
    return image


def load_image(source: str | os.PathLike | bytes, *, alpha: str = "drop", exif: bool = False) -> Image.Image:
    """Open an image file or encoded bytes as an RGB PIL image (LLaVA's `Image.open(...).convert('RGB')`).

    `alpha` and `exif` as in `to_rgb`. Raises `ValueError` for empty input,
    `OSError`/`PIL.UnidentifiedImageError` for unreadable or truncated data (the
    image is decoded here, not lazily).
    """
    _check_rule(alpha)
    return _convert(_open(source), alpha=alpha, exif=exif)


def _check_size(image: Image.Image) -> None:
    if image.width <= 0 or image.height <= 0:
        raise ValueError(f"zero-sized image ({image.width}x{image.height})")


def to_rgb(image: ImageInput, *, alpha: str = "drop", exif: bool = False) -> Image.Image:
    """Any supported input as an RGB PIL image, by one rule for every kind of input.

    Args:
      image: a PIL image, a path, encoded bytes, or a uint8 array `[H, W]`, `[H, W, 1]`,
        `[H, W, 3]` or `[H, W, 4]` (channels last; 4 channels = RGBA).
      alpha: "drop" (default: LLaVA's `.convert('RGB')`) or "white" (transparency
        composited on white, as transformers' CLIP processor does for in-memory images).
      exif: apply EXIF orientation first (transformers' `load_image` does for files;
        LLaVA does not).
    """
    _check_rule(alpha)
    if isinstance(image, Image.Image):
        return _convert(image, alpha=alpha, exif=exif)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 [H, W(, C)], got {image.dtype}")
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
            raise ValueError(f"image array must be [H, W], [H, W, 1|3|4], got shape {image.shape}")
        if 0 in image.shape:
            raise ValueError(f"zero-sized image array {image.shape}")
        return _convert(Image.fromarray(image), alpha=alpha, exif=exif)
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        return load_image(image, alpha=alpha, exif=exif)
    raise TypeError(f"unsupported image type {type(image).__name__}")


def expand_to_square(image: Image.Image, color: tuple[int, int, int] = PAD_COLOR) -> Image.Image:
    """LLaVA's `expand2square`: paste `image` centred on a square of side max(w, h) filled with `color`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), color)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def resize_shortest_edge(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so the shortest side is `size`, as HF's `get_resize_output_image_size`.

    The long side is `int(size * long / short)` (truncated, as HF does).
    """
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) == (width, height):
        return image
    return image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)


def center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """uint8[H, W, C] -> uint8[size, size, C]; zero-pads like HF when the image is smaller."""
    height, width = array.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    if top >= 0 and left >= 0:
        return array[top : top + size, left : left + size]
    # Only reachable for sizes the resize step cannot produce; mirrors HF's padding rule.
    new_h, new_w = max(size, height), max(size, width)
    padded = np.zeros((new_h, new_w) + array.shape[2:], array.dtype)
    pad_top, pad_left = -(-(new_h - height) // 2), -(-(new_w - width) // 2)
    padded[pad_top : pad_top + height, pad_left : pad_left + width] = array
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return padded[top : top + size, left : left + size]


def normalize(array: np.ndarray) -> np.ndarray:
    """uint8[..., 3] -> float32[..., 3]: rescale 1/255 and CLIP mean/std (HF arithmetic, bit-exact)."""
    out = np.empty(array.shape, np.float32)
    for c in range(3):
        # A per-channel table indexed by the uint8 values: ~5x faster than the arithmetic.
        out[..., c] = _TABLE[c][array[..., c]]
    return out


def fit_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an image scaled, aspect kept, to fit `target` (HF `get_patch_output_size`)."""
    target_h, target_w = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def anyres_tiles(pil: Image.Image, grid_pinpoints, size: int) -> np.ndarray:
    """An RGB image -> uint8[1 + rows * cols, size, size, 3]: the global view, then the grid's tiles row by row."""
    height, width = pil.height, pil.width
    target = select_best_resolution(height, width, grid_pinpoints)
    new_h, new_w = fit_size(height, width, target)
    scaled = pil if (new_w, new_h) == pil.size else pil.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    canvas = np.zeros(target + (3,), np.uint8)  # black padding, as HF's `_pad_for_patching`
    top, left = (target[0] - new_h) // 2, (target[1] - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.asarray(scaled)
    rows, cols = target[0] // size, target[1] // size
    tiles = canvas.reshape(rows, size, cols, size, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, size, size, 3)
    base = pil if pil.size == (size, size) else pil.resize((size, size), resample=Image.Resampling.BICUBIC)
    return np.concatenate([np.asarray(base)[None], tiles])


def _pinpoints_for(mode: str, grid_pinpoints):
    if mode == "anyres" and not grid_pinpoints:
        raise ValueError("mode 'anyres' needs grid_pinpoints ((height, width) pairs, multiples of size)")
    return grid_pinpoints


def prepare_pixels(
    image: ImageInput,
    *,
    mode: str = "pad",
    size: int = 336,
    alpha: str = "drop",
    exif: bool = False,
    grid_pinpoints=None,
) -> np.ndarray:
    """`preprocess_image` before normalisation: uint8[size, size, 3] (4x smaller to ship between processes);
    `anyres`: uint8[1 + rows * cols, size, size, 3]."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pinpoints = _pinpoints_for(mode, grid_pinpoints)
    pil = to_rgb(image, alpha=alpha, exif=exif)
    if mode == "anyres":
        return anyres_tiles(pil, pinpoints, size)
    if mode == "pad":
        pil = expand_to_square(pil)
    pil = resize_shortest_edge(pil, size)
    return np.ascontiguousarray(center_crop(np.asarray(pil), size))


def preprocess_image(
    image: ImageInput,
    *,
    mode: str = "pad",
    size: int = 336,
    alpha: str = "drop",
    exif: bool = False,
    grid_pinpoints=None,
) -> np.ndarray:
    """One image to CLIP pixels as LLaVA-1.5 feeds them to the vision tower.

    Args:
      image: a PIL image, a path, encoded bytes, or a uint8 array `[H, W(, C)]`.
      mode: `pad` (square on the mean colour first; stage 2 and evaluation),
        `square` (CLIP resize + centre crop only; stage 1) or `anyres` (tiles
        + global view, LLaVA-1.5-HD / LLaVA-NeXT; needs `grid_pinpoints`).
      size: output side (336 for CLIP ViT-L/14-336).
      alpha: "drop" (default, LLaVA's `Image.open(...).convert('RGB')`: transparency
        ignored) or "white" (composited on white, as transformers' processor does);
        the same rule for paths, bytes, PIL images and arrays.
      exif: apply EXIF orientation (transformers' `load_image`; LLaVA does not).
      grid_pinpoints: `anyres` only, candidate (height, width) resolutions, multiples of `size`.
    Returns:
      float32[size, size, 3], channels last; `anyres`: float32[1 + rows * cols, size, size, 3],
      the global view first, then the tiles row by row (the image's original height and
      width, which the model also needs, are those of `to_rgb(image)`).
    """
    pixels = prepare_pixels(image, mode=mode, size=size, alpha=alpha, exif=exif, grid_pinpoints=grid_pinpoints)
    return normalize(pixels)


def image_hw(image: ImageInput, *, exif: bool = False) -> tuple[int, int]:
    """(height, width) of an image without decoding its pixels when it is a file or bytes.

    Reads only the header (the token count of an anyres image depends on its size,
    known before the image is decoded); with `exif`, sizes after EXIF rotation.
    Raises like `load_image` for missing or unreadable data.
    """
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        if isinstance(image, (str, os.PathLike)) and os.path.getsize(image) == 0:
            raise ValueError(f"empty image file (0 bytes): {os.fspath(image)}")
        if not isinstance(image, (str, os.PathLike)) and len(image) == 0:
            raise ValueError("empty image data (0 bytes)")
        with Image.open(io.BytesIO(bytes(image)) if not isinstance(image, (str, os.PathLike)) else image) as pil:
            if exif and pil.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # orientations that swap the axes
                return pil.width, pil.height
            return pil.height, pil.width
    pil = to_rgb(image, exif=exif)
    return pil.height, pil.width


def preprocess_images(images, *, mode: str = "pad", size: int = 336, alpha: str = "drop", exif: bool = False):
    """A list of images -> float32[N, size, size, 3] (see `preprocess_image`; not for `anyres`, whose
    images have different numbers of tiles)."""
    if mode == "anyres":
        raise ValueError("preprocess_images stacks one crop per image; call preprocess_image per anyres image")
    if not images:
        return np.zeros((0, size, size, 3), np.float32)
    return np.stack([preprocess_image(im, mode=mode, size=size, alpha=alpha, exif=exif) for im in images])
