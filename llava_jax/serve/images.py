"""Images named by a request: `data:` URIs, and (when the server allows them) http(s) URLs and local files.

Every path ends in `read_image`, which checks the byte count and the pixel
count (from the header, before decoding) and accepts PNG and JPEG only.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings

from PIL import Image

from llava_jax.serve.errors import ApiError

FORMATS = ("PNG", "JPEG")


@dataclasses.dataclass(frozen=True)
class ImagePolicy:
    """Where images may come from and how large they may be.

    max_bytes: encoded size; max_pixels: width * height; allow_remote: fetch http(s) URLs;
    local_dir: serve `file://` paths inside this directory (None: refused).
    """

    max_bytes: int = 10 * 2**20
    max_pixels: int = 4096 * 4096
    allow_remote: bool = False
    local_dir: str | None = None
    remote_timeout_s: float = 10.0


def read_image(data: bytes, policy: ImagePolicy, param: str) -> Image.Image:
    """Decode PNG/JPEG bytes into an RGB image within the policy's limits.

    Raises:
      ApiError 413 for too many bytes or pixels, 422 for data that is not a PNG/JPEG image.
    """
    if len(data) > policy.max_bytes:
        raise ApiError(
            413, f"image is {len(data)} bytes; the limit is {policy.max_bytes}", param=param, code="image_too_large"
        )
    if not data:
        raise ApiError(422, "image data is empty", param=param, code="invalid_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise ApiError(
                    422,
                    f"image format {image.format} is not supported (PNG or JPEG)",
                    param=param,
                    code="invalid_image",
                )
            width, height = image.size
            if width * height > policy.max_pixels:
                raise ApiError(
                    413,
                    f"image is {width}x{height} = {width * height} pixels; the limit is {policy.max_pixels}",
                    param=param,
                    code="image_too_large",
                )
            from llava_jax.data.image import load_image

            return load_image(data)
    except ApiError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ApiError(413, f"image too large to decode: {e}", param=param, code="image_too_large") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ApiError(
            422, f"cannot decode image: {type(e).__name__}: {e}", param=param, code="invalid_image"
        ) from None


def _data_uri(url: str, policy: ImagePolicy, param: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ApiError(400, "data: image URIs must be base64 (data:image/png;base64,...)", param=param)
    mime = header[len("data:") : -len(";base64")].lower()
    if mime and not mime.startswith("image/"):
        raise ApiError(400, f"data: URI has type {mime!r}, not an image type", param=param)
    # Refuse before decoding: base64 is 4 characters per 3 bytes.
    if len(payload) * 3 // 4 > policy.max_bytes + 3:
        raise ApiError(
            413,
            f"image is about {len(payload) * 3 // 4} bytes; the limit is {policy.max_bytes}",
            param=param,
            code="image_too_large",
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, f"data: URI is not valid base64: {e}", param=param) from None


def _local_file(url: str, policy: ImagePolicy, param: str) -> bytes:
    if policy.local_dir is None:
        raise ApiError(
            400,
            "file:// image URLs are refused (start the server with --allow-local-images DIR to allow a directory)",
            param=param,
            code="image_url_not_allowed",
        )
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ApiError(400, f"file:// URL names a host ({parsed.netloc!r})", param=param, code="image_url_not_allowed")
    root = os.path.realpath(policy.local_dir)
    path = os.path.realpath(urllib.parse.unquote(parsed.path))  # symlinks and `..` resolved before the check
    if os.path.commonpath([root, path]) != root:
        raise ApiError(
            400, "file:// image path is outside the allowed directory", param=param, code="image_url_not_allowed"
        )
    if not os.path.isfile(path):
        raise ApiError(400, f"no such image file: {parsed.path}", param=param, code="image_not_found")
    size = os.path.getsize(path)
    if size > policy.max_bytes:
        raise ApiError(
            413, f"image is {size} bytes; the limit is {policy.max_bytes}", param=param, code="image_too_large"
        )
    with open(path, "rb") as f:
        return f.read()


def _remote(url: str, policy: ImagePolicy, param: str) -> bytes:
    if not policy.allow_remote:
        raise ApiError(
            400,
            "http(s) image URLs are refused (start the server with --allow-remote-images to fetch them)",
            param=param,
            code="image_url_not_allowed",
        )
    try:
        with urllib.request.urlopen(url, timeout=policy.remote_timeout_s) as response:
            data = response.read(policy.max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ApiError(400, f"cannot fetch image {url!r}: {e}", param=param, code="image_fetch_failed") from None
    return data


def fetch_image(url: str, policy: ImagePolicy, param: str) -> Image.Image:
    """The image an `image_url` names (`data:`, `file://`, `http(s)://`), read within `policy`.

    Blocking (file and network reads, decoding): call it off the event loop.
    Raises:
      ApiError: 400 for refused or malformed URLs, 413 for oversized images, 422 for undecodable ones.
    """
    if not isinstance(url, str) or not url:
        raise ApiError(400, "image_url.url must be a non-empty string", param=param)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = _data_uri(url, policy, param)
    elif scheme == "file":
        data = _local_file(url, policy, param)
    elif scheme in ("http", "https"):
        data = _remote(url, policy, param)
    else:
        raise ApiError(
            400, f"unsupported image URL scheme {scheme or url[:16]!r} (data:, file:// or http(s)://)", param=param
        )
    return read_image(data, policy, param)
