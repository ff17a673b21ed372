"""Image URLs: data URIs, local files only inside the allowed directory, remote fetches only when allowed."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from llava_jax.serve.errors import ApiError
from llava_jax.serve.images import ImagePolicy, fetch_image, read_image


def _png(w=30, h=20, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _fails(url, policy, status, words, code=None):
    with pytest.raises(ApiError) as info:
        fetch_image(url, policy, "p")
    assert info.value.status == status and words in info.value.message, info.value.message
    assert info.value.param == "p"
    if code:
        assert info.value.code == code


def test_data_uris():
    policy = ImagePolicy()
    image = fetch_image("data:image/png;base64," + base64.b64encode(_png()).decode(), policy, "p")
    assert image.size == (30, 20) and image.mode == "RGB"
    jpeg = fetch_image("data:image/jpeg;base64," + base64.b64encode(_png(fmt="JPEG")).decode(), policy, "p")
    assert jpeg.size == (30, 20)
    _fails("data:image/png,rawbytes", policy, 400, "base64")
    _fails("data:text/plain;base64,aGk=", policy, 400, "not an image type")
    _fails("data:image/png;base64,!!!!", policy, 400, "not valid base64")
    _fails("data:image/bmp;base64," + base64.b64encode(_png(fmt="BMP")).decode(), policy, 422, "BMP")
    _fails("data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nxx").decode(), policy, 422, "cannot decode")
    _fails("ftp://host/a.png", policy, 400, "unsupported image URL scheme")


def test_size_limits_are_413_before_decoding():
    data = _png(100, 100)
    _fails("data:image/png;base64," + base64.b64encode(data).decode(), ImagePolicy(max_bytes=1000), 413, "bytes")
    with pytest.raises(ApiError) as info:
        read_image(data, ImagePolicy(max_pixels=99 * 100), "p")
    assert info.value.status == 413 and "100x100 = 10000 pixels" in info.value.message


def test_local_files_only_inside_the_allowed_directory(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.png").write_bytes(_png())
    (outside / "b.png").write_bytes(_png())
    (root / "link.png").symlink_to(outside / "b.png")
    (root / "dirlink").symlink_to(outside)
    url = (root / "sub" / "a.png").as_uri()
    _fails(url, ImagePolicy(), 400, "--allow-local-images", "image_url_not_allowed")
    policy = ImagePolicy(local_dir=str(root))
    assert fetch_image(url, policy, "p").size == (30, 20)
    for escape in (
        (outside / "b.png").as_uri(),
        f"file://{root}/sub/../../outside/b.png",
        (root / "link.png").as_uri(),
        (root / "dirlink" / "b.png").as_uri(),
    ):
        _fails(escape, policy, 400, "outside the allowed directory", "image_url_not_allowed")
    _fails((root / "missing.png").as_uri(), policy, 400, "no such image file")
    _fails(f"file://otherhost{root}/sub/a.png", policy, 400, "names a host")
    _fails((root / "sub" / "a.png").as_uri(), ImagePolicy(local_dir=str(root), max_bytes=10), 413, "bytes")


def test_remote_urls_only_when_allowed(tmp_path):
    import functools
    import http.server
    import threading

    _fails("https://example.com/a.png", ImagePolicy(), 400, "--allow-remote-images", "image_url_not_allowed")
    (tmp_path / "a.png").write_bytes(_png())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/a.png"
        assert fetch_image(url, ImagePolicy(allow_remote=True), "p").size == (30, 20)
        _fails(url, ImagePolicy(allow_remote=True, max_bytes=100), 413, "bytes")
        _fails(url.replace("a.png", "none.png"), ImagePolicy(allow_remote=True), 400, "cannot fetch image")
    finally:
        httpd.shutdown()
        httpd.server_close()
    # Allowed, but nothing listens there: a clear 400, not a 500 (loopback only, port 9 is discard).
    _fails("http://127.0.0.1:9/a.png", ImagePolicy(allow_remote=True, remote_timeout_s=2), 400, "cannot fetch image")
