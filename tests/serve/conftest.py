"""Fixtures of the serving tests: a tiny saved model, its in-process twin, and one server subprocess per session.

The server runs `llava-jax serve` on a free loopback port with small limits (so that
the limit tests send small bodies), an API key, the page, `--allow-local-images`
on a temporary directory and one-token chunks (a long answer then takes long
enough to be cancelled midway). It is stopped at the end of the session.
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-123"
MAX_BODY = 1_000_000
MAX_IMAGE_BYTES = 200_000
MAX_PIXELS = 40_000
MAX_BATCH = 4
MAX_TOKENS = 8  # the tests' answers: the warm-up compiles these shapes


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="session")
def pictures() -> list[bytes]:
    """Three small PNG images (RGB noise, 40x50, 28x28, 60x30)."""
    rng = np.random.default_rng(0)
    return [png_bytes(rng.integers(0, 255, shape, dtype=np.uint8)) for shape in ((40, 50, 3), (28, 28, 3), (60, 30, 3))]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    """A tiny random model with the shipped synthetic tokenizer, saved as a llava_jax checkpoint."""
    import llava_jax
    from llava_jax.demo.synthetic.tokenizer import synthetic_tokenizer
    from llava_jax.presets import tiny

    tok = synthetic_tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    model = llava_jax.random_model(tiny(vocab_size=tok.vocab_size, image_token_index=image_id), seed=3, tokenizer=tok)
    path = str(tmp_path_factory.mktemp("serve") / "tiny-llava")
    model.save(path)
    return path


@pytest.fixture(scope="session")
def model(model_dir):
    """The saved model loaded in this process (what `Llava.chat` answers are compared with)."""
    import llava_jax

    return llava_jax.load(model_dir)


@pytest.fixture(scope="session")
def allowed_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("allowed_images")


class Server:
    """A `llava-jax serve` subprocess: `client()` waits until it is ready (its URL then in `url`), `stop()`."""

    def __init__(self, process: subprocess.Popen):
        self.process, self.lines, self.url = process, [], None
        self._client = None
        reader = threading.Thread(target=lambda: self.lines.extend(iter(process.stdout.readline, "")), daemon=True)
        reader.start()

    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 240) -> str:
        """The server's URL once it says it is ready (warm-up done); fails the test if it dies first."""
        deadline = time.monotonic() + timeout
        while self.url is None and time.monotonic() < deadline and self.process.poll() is None:
            match = re.search(r"ready on (http://127\.0\.0\.1:\d+)", self.output())
            self.url = match.group(1) if match else None
            time.sleep(0.1)
        if self.url is None:
            pytest.fail(f"the server did not get ready:\n{self.output()[-4000:]}")
        return self.url

    def client(self):
        """An httpx client on the ready server, with the API key."""
        import httpx

        if self._client is None:
            self._client = httpx.Client(
                base_url=self.wait_ready(), headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
            )
        return self._client

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def server(model_dir, allowed_dir):
    """One server for the session, started at once; `server.client()` waits for it to be ready, so that
    a test can compute its `Llava.chat` references while the server warms up."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "JAX_PLATFORMS": "cpu",
        "JAX_DEFAULT_MATMUL_PRECISION": "highest",  # as tests/conftest.py sets in this process
        "XLA_FLAGS": "",  # one CPU device: the server does not need the 8 simulated ones
    }
    command = [
        sys.executable, "-m", "llava_jax.cli", "serve", "--model", model_dir, "--port", "0",
        "--max-batch", str(MAX_BATCH), "--ui", "--api-key", API_KEY, "--allow-local-images", str(allowed_dir),
        "--max-body-bytes", str(MAX_BODY), "--max-image-bytes", str(MAX_IMAGE_BYTES),
        "--max-image-pixels", str(MAX_PIXELS), "--chunk-tokens", "1", "--warmup-max-tokens", str(MAX_TOKENS),
        "--batch-wait-ms", "20",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = Server(process)
    log = model_dir + ".server.log"
    try:
        yield server
    finally:
        server.stop()
        with open(log, "w") as f:
            f.write(server.output())
        print(f"\nserver log: {log}")


@pytest.fixture(scope="session")
def client(server):
    """An httpx client on the ready server, with the API key."""
    return server.client()
