"""The app in-process (FastAPI TestClient): not ready, queue full, a failing batch, the page; all OpenAI errors."""

import re

import pytest

from llava_jax.data.conversation import get_template
from llava_jax.serve.app import create_app
from llava_jax.serve.batching import Engine
from llava_jax.serve.page import render_page

HI = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@pytest.fixture
def make(model):
    from fastapi.testclient import TestClient

    engines = []

    def build(**kwargs):
        engine = Engine(model, template=get_template("vicuna_v1"), **kwargs)
        engines.append(engine)
        app = create_app(engine, model_name="m", api_key="k", page=render_page("m", []))
        return engine, TestClient(app, headers={"Authorization": "Bearer k"}, raise_server_exceptions=False)

    yield build
    for engine in engines:
        engine.stop()


def _error(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "Traceback" not in error["message"]
    return error


def test_warming_up_and_failed_warm_up_are_503(make):
    engine, client = make()
    assert _error(client.get("/health"), 503)["code"] == "warming_up"
    assert _error(client.post("/v1/chat/completions", json=HI), 503)["code"] == "warming_up"
    engine.failed = "warm-up failed: RuntimeError: no memory"
    assert "no memory" in _error(client.get("/health"), 503)["message"]


def test_a_full_queue_is_429(make):
    engine, client = make(max_queue=0)
    engine.ready.set()
    error = _error(client.post("/v1/chat/completions", json=HI), 429)
    assert error["code"] == "queue_full" and "--max-queue 0" in error["message"]
    assert 'llava_serve_errors_total{status="429"} 1' in client.get("/metrics").text


def test_a_failing_batch_is_a_500_and_the_server_goes_on(make, monkeypatch):
    engine, client = make()
    calls = []

    def boom(jobs, **kwargs):
        calls.append(len(jobs))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        for job in jobs:
            job.sink("done", {"finish_reason": "stop", "text": "fine", "prompt_tokens": 3, "completion_tokens": 1})

    monkeypatch.setattr(engine, "_admit", boom)
    engine.start(warmup=False)
    assert engine.ready.wait(30)
    error = _error(client.post("/v1/chat/completions", json=HI), 500)
    assert error["message"] == "generation failed: RuntimeError" and error["type"] == "server_error"
    body = client.post("/v1/chat/completions", json=HI).json()
    assert body["choices"][0]["message"]["content"] == "fine" and body["usage"]["total_tokens"] == 4
    assert "llava_serve_batch_errors_total 1" in client.get("/metrics").text


def test_routes_methods_and_the_page(make):
    engine, client = make()
    assert _error(client.get("/v1/chat/completions"), 405)["code"] == "method_not_allowed"
    assert _error(client.get("/nowhere"), 404)["code"] == "not_found"
    for path in ("/docs", "/openapi.json"):
        _error(client.get(path), 404)  # no API explorer: it would load scripts from a CDN
    page = client.get("/", headers={"Authorization": ""})  # the page needs no key
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text) and "cdn" not in page.text.lower()
    assert _error(client.get("/health", headers={"Authorization": "Bearer nope"}), 401)["code"] == "invalid_api_key"


def test_the_page_escapes_what_it_embeds():
    html = render_page("<b>m</b>", [{"image": "data:,", "question": "</script><script>alert(1)", "answer": None}])
    assert "<b>m</b>" not in html and "&lt;b&gt;m&lt;/b&gt;" in html
    assert "</script><script>alert(1)" not in html
