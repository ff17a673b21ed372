"""The `--ui` page in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python API)."""

from __future__ import annotations

import os
import shutil

import pytest

from llava_jax.data.image import load_image
from tests.serve.conftest import API_KEY

INSTALL = "apt-get update && apt-get install -y chromium && pip install playwright (never `playwright install`)"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _answer(page, n: int) -> str:
    page.wait_for_selector(f".assistant:nth-child({2 * n})[data-done='1']", timeout=120_000)
    return page.evaluate(f"document.querySelectorAll('.assistant')[{n - 1}].textContent")


@pytest.mark.skipif(CHROMIUM is None, reason=f"no chromium browser; install it with: {INSTALL}")
def test_page_uploads_an_image_and_streams_answers(server, model, pictures, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason=f"playwright missing: {INSTALL}")
    image_path = tmp_path / "upload.png"
    image_path.write_bytes(pictures[0])
    image = load_image(pictures[0])
    first = model.chat(image, "What is in the image?", max_new_tokens=8)[0]
    turns = [("user", "What is in the image?"), ("assistant", first), ("user", "Which colour?")]
    second = model.chat(image, [turns], max_new_tokens=8)[0]
    url = server.wait_ready()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(url + "/")
            page.wait_for_selector("body[data-state='idle']")
            assert page.locator(".example").count() == 5  # the demo task's examples (the model uses its tokenizer)
            page.wait_for_selector("#keybox:not([hidden])")  # the server asked for a key
            page.fill("#key", API_KEY)
            page.set_input_files("#file", str(image_path))
            page.wait_for_selector("#preview img")
            page.fill("#max_tokens", "8")
            streams = []
            page.on("response", lambda r: streams.append(r) if r.url.endswith("/v1/chat/completions") else None)
            page.fill("#question", "What is in the image?")
            page.click("#send")
            assert _answer(page, 1) == first
            # The page read an event stream: the answer came in pieces, then [DONE].
            events = [e for e in streams[0].text().split("\n\n") if e]
            assert streams[0].headers["content-type"].startswith("text/event-stream")
            assert (
                events[-1] == "data: [DONE]"
                and sum('"content": "' in e and '"content": ""' not in e for e in events) >= 2
            )
            page.fill("#question", "Which colour?")
            page.press("#question", "Enter")  # Enter sends too
            assert _answer(page, 2) == second  # the follow-up carries the conversation
            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot of the chat page: {shot}")
            assert os.path.getsize(shot) > 0
            page.click("#clear")
            assert page.locator(".msg").count() == 0 and page.inner_text("#preview") == "no image"
        finally:
            browser.close()
