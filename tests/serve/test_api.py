"""`llava-jax serve` end to end: one server subprocess (tests/serve/conftest.py), answers against `Llava.chat`."""

from __future__ import annotations

import io
import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from llava_jax.data.image import load_image
from tests.serve.conftest import API_KEY, MAX_TOKENS, data_url

QUESTIONS = ["What is in the image?", "Describe it.", "Which colour?", "Is it round?"]


def ask(client, messages, **fields):
    response = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": MAX_TOKENS, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def user(text, image: bytes | None = None) -> dict:
    if image is None:
        return {"role": "user", "content": text}
    parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
    return {"role": "user", "content": parts}


def reference(model, image: bytes | None, turns) -> str:
    return model.chat(None if image is None else load_image(image), [turns], max_new_tokens=MAX_TOKENS)[0]


def stream_events(client, body) -> list:
    """The decoded `data:` payloads of a streamed answer (`[DONE]` kept as the string)."""
    events = []
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def metric(client, name: str) -> dict[str, float]:
    """`{labels: value}` of one metric from `/metrics`."""
    text = client.get("/metrics").text
    return {m.group(1) or "": float(m.group(2)) for m in re.finditer(rf"^{name}(\{{.*?\}})? (\S+)$", text, re.M)}


def test_greedy_answers_equal_chat(server, model, pictures):
    conversation = [("user", "What is in the image?"), ("assistant", "A cat."), ("user", "Which colour is it?")]
    cases = [
        (pictures[0], [user("What is in the image?", pictures[0])], [("user", "What is in the image?")]),
        (None, [user("Who are you?")], [("user", "Who are you?")]),
        (
            pictures[1],
            [
                user(conversation[0][1], pictures[1]),
                {"role": "assistant", "content": "A cat."},
                user(conversation[2][1]),
            ],
            conversation,
        ),
    ]
    expected = [reference(model, image, turns) for image, _, turns in cases]  # while the server warms up
    client = server.client()
    log = server.output()
    assert "warm-up: compiled batches of [1, 2, 4] rows" in log
    assert log.index("warm-up: compiled") < log.index("ready on")
    assert client.get("/health").json() == {"status": "ok", "model": "tiny-llava", "queue": 0}
    for (_, messages, _), answer in zip(cases, expected):
        body = ask(client, messages, temperature=0, model="tiny-llava")
        assert body["object"] == "chat.completion" and body["model"] == "tiny-llava"
        choice = body["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": answer}
        assert choice["finish_reason"] in ("stop", "length")
        usage = body["usage"]
        assert 1 <= usage["completion_tokens"] <= MAX_TOKENS
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_chunks_concatenate_to_the_answer(client, model, pictures):
    body = {"messages": [user("Describe it.", pictures[2])], "max_tokens": MAX_TOKENS}
    events = stream_events(client, {**body, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([d for d in deltas if d]) >= 2  # one-token chunks: the answer arrives in pieces
    assert text == reference(model, pictures[2], [("user", "Describe it.")])
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_32_concurrent_requests_are_batched_and_right(client, model, pictures):
    expected = {(i, q): reference(model, pictures[i], [("user", q)]) for i in range(2) for q in QUESTIONS}
    before = metric(client, "llava_serve_batches_by_rows_total")

    def one(k):
        i, q = k % 2, QUESTIONS[k % len(QUESTIONS)]
        return (i, q), ask(client, [user(q, pictures[i])])["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(32)))
    assert len(answers) == 32
    for key, text in answers:
        assert text == expected[key], key
    after = metric(client, "llava_serve_batches_by_rows_total")
    shared = {k: after[k] - before.get(k, 0) for k in after if int(re.search(r"\d+", k).group()) >= 2}
    assert sum(shared.values()) >= 1, (before, after)


def _post(client, body, **kwargs):
    raw = kwargs.pop("content", None)
    if raw is not None:
        return client.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}, **kwargs)
    return client.post("/v1/chat/completions", json=body, **kwargs)


def _image_message(url: str) -> list:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Hi"}]
    return [{"role": "user", "content": parts}]


def test_bad_requests_get_openai_errors_and_the_server_lives_on(client, server, model, pictures, allowed_dir, tmp_path):
    import numpy as np

    from tests.serve.conftest import MAX_BODY, png_bytes

    outside = tmp_path / "secret.png"
    outside.write_bytes(pictures[0])
    (allowed_dir / "ok.png").write_bytes(pictures[0])
    (allowed_dir / "link.png").symlink_to(outside)
    rng = np.random.default_rng(1)
    big_bytes = png_bytes(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))  # about 270 kB (noise)
    big_pixels = png_bytes(np.zeros((250, 250, 3), np.uint8))  # 62,500 pixels in a few hundred bytes
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    gif = gif.getvalue()
    hi = [user("Hi")]
    cases = [
        ("bad json", None, b"{bad", 400, "invalid_json"),
        ("no messages", {"max_tokens": 4}, None, 400, None),
        ("bad role", {"messages": [{"role": "robot", "content": "x"}]}, None, 400, None),
        ("two users", {"messages": hi + hi}, None, 400, None),
        ("temperature", {"messages": hi, "temperature": 3}, None, 400, None),
        ("top_p", {"messages": hi, "top_p": 0}, None, 400, None),
        ("max_tokens", {"messages": hi, "max_tokens": 0}, None, 400, None),
        ("n", {"messages": hi, "n": 2}, None, 400, None),
        ("stop", {"messages": hi, "stop": ["a", "b", "c", "d", "e"]}, None, 400, None),
        (
            "two images",
            {"messages": [{"role": "user", "content": _image_message(data_url(pictures[0]))[0]["content"] * 2}]},
            None,
            400,
            "too_many_images",
        ),  # fmt: skip
        ("remote", {"messages": _image_message("https://example.com/a.png")}, None, 400, "image_url_not_allowed"),
        ("outside", {"messages": _image_message(outside.as_uri())}, None, 400, "image_url_not_allowed"),
        (
            "dotdot",
            {"messages": _image_message(f"file://{allowed_dir}/../{outside.parent.name}/secret.png")},
            None,
            400,
            "image_url_not_allowed",
        ),  # fmt: skip
        (
            "symlink",
            {"messages": _image_message((allowed_dir / "link.png").as_uri())},
            None,
            400,
            "image_url_not_allowed",
        ),  # fmt: skip
        ("not base64", {"messages": _image_message("data:image/png;base64,@@@")}, None, 400, None),
        ("context", {"messages": [user("word " * 600)]}, None, 400, "context_length_exceeded"),
        ("max_tokens over context", {"messages": hi, "max_tokens": 600}, None, 400, "context_length_exceeded"),
        ("body", None, b'{"messages": "' + b"x" * MAX_BODY + b'"}', 413, "request_too_large"),
        ("image bytes", {"messages": _image_message(data_url(big_bytes))}, None, 413, "image_too_large"),
        ("image pixels", {"messages": _image_message(data_url(big_pixels))}, None, 413, "image_too_large"),
        ("gif", {"messages": _image_message(data_url(gif, "image/gif"))}, None, 422, "invalid_image"),
        (
            "not an image",
            {"messages": _image_message(data_url(b"\x89PNG\r\n\x1a\nbroken"))},
            None,
            422,
            "invalid_image",
        ),
        ("unknown model", {"messages": hi, "model": "gpt-4"}, None, 404, "model_not_found"),
    ]
    for name, body, raw, status, code in cases:
        response = _post(client, body, content=raw)
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, name
        assert error["message"] and "Traceback" not in error["message"], name
        if code:
            assert error["code"] == code, (name, error)
        if name.startswith("image "):
            assert name.split()[1] in error["message"], error  # says which limit: bytes or pixels
    assert client.get("/no/such/route").status_code == 404
    assert client.get("/v1/models/other").json()["error"]["code"] == "model_not_found"
    # A file inside the allowed directory is read.
    ok = ask(client, _image_message((allowed_dir / "ok.png").as_uri()))
    assert ok["choices"][0]["message"]["content"] == reference(model, pictures[0], [("user", "Hi")])
    assert client.get("/health").json()["status"] == "ok"
    assert server.process.poll() is None and "Traceback" not in server.output()


def test_every_route_checks_the_key(server):
    import httpx

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        routes = (("GET", "/health"), ("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/chat/completions"))
        for method, path in routes:
            response = httpx.request(method, server.url + path, headers=headers, json={}, timeout=30)
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"]["code"] == "invalid_api_key"
    # The page is static HTML and has to load in a browser, which cannot send a bearer header.
    page = httpx.get(server.url + "/", timeout=30)
    assert page.status_code == 200 and "<script>" in page.text
    models = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert [m["id"] for m in models.json()["data"]] == ["tiny-llava"]


def test_a_stalled_client_blocks_no_one_and_a_dropped_stream_frees_its_row(client, server, model, pictures):
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"messages": [user("Go on.")], "stream": True}).encode()  # the default length
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    requests = metric(client, "llava_serve_requests_total")[""]
    cancelled = metric(client, "llava_serve_cancelled_total")[""]
    stalled = socket.create_connection((host, int(port)))
    try:
        stalled.sendall(head + body)  # and never read: the server must not wait on this client
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            metric(client, "llava_serve_requests_total")[""] < requests + 1
            or metric(client, "llava_serve_queue_depth")[""] > 0
        ):
            time.sleep(0.02)  # until it is admitted (its long answer's cache length compiles once)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda q: ask(client, [user(q, pictures[0])]), QUESTIONS))
        for question, answer in zip(QUESTIONS, answers):
            assert answer["choices"][0]["message"]["content"] == reference(model, pictures[0], [("user", question)])
        # A stream dropped after its first words: its row is ended (counted as cancelled), no longer decoded.
        with client.stream(
            "POST", "/v1/chat/completions", json={"messages": [user("Describe it.")], "stream": True}
        ) as response:
            for line in response.iter_lines():
                if '"content": "' in line and '"role"' not in line:
                    break
        # Counted while the stalled request is still open (its row may still be decoding alongside:
        # closing it below cancels that row too).
        deadline = time.monotonic() + 30
        while metric(client, "llava_serve_cancelled_total")[""] < cancelled + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(client, "llava_serve_cancelled_total")[""] == cancelled + 1
    finally:
        stalled.close()
    assert ask(client, [user("Hi")])["choices"][0]["message"]["content"] == reference(model, None, [("user", "Hi")])
