"""The HTTP app: OpenAI-style routes over an `Engine`, errors as OpenAI JSON, optional bearer key and web page.

Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /v1/models/{id}`,
`GET /health` (503 while warming up), `GET /metrics` (Prometheus text:
decode chunks by live rows, decode steps, queue depth, ...) and, with the page enabled, `GET /`.
Every route checks the API key when one is set, except the page itself
(static HTML with no data: a browser cannot send a bearer header when it
opens a URL; the page asks for the key and sends it with its requests).

Every refusal is `{"error": {"message", "type", "param", "code"}}` with its
status (400 malformed, 401 key, 404 route or model, 413 sizes, 422
undecodable image, 429 queue full, 503 not ready); an unexpected failure is a
500 of the same shape, its traceback only in the server's log.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hmac
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llava_jax.serve.batching import Engine
from llava_jax.serve.errors import ApiError
from llava_jax.serve.images import ImagePolicy, fetch_image
from llava_jax.serve.jobs import Job, NotReady, QueueFull
from llava_jax.serve.protocol import (
    ChatRequest,
    chunk_event,
    completion_body,
    completion_id,
    parse_chat_request,
    sse,
    usage,
)

log = logging.getLogger("llava_jax.serve")
DISCONNECT_POLL_S = 0.5
READER_THREADS = 4


def error_response(error: ApiError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def read_json(request: Request, limit: int):
    """The request's JSON body, read at most `limit` bytes far (413 past it, 400 for bad JSON)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {limit}", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None


def create_app(
    engine: Engine,
    *,
    model_name: str,
    image_policy: ImagePolicy = ImagePolicy(),
    api_key: str | None = None,
    max_body_bytes: int = 16 * 2**20,
    page: str | None = None,
) -> FastAPI:
    """The FastAPI app serving `engine` (started by the caller).

    Args:
      model_name: the id `/v1/models` lists; requests naming another model get 404.
      image_policy: where images may come from and their size limits.
      api_key: when set, every route but the page needs `Authorization: Bearer <key>`.
      max_body_bytes: largest request body.
      page: HTML served at `/` (None: no page).
    """
    app = FastAPI(title="llava_jax", docs_url=None, redoc_url=None, openapi_url=None)
    # Requests are read (image decode, preprocessing, tokenisation) on these threads, beside the
    # engine's; a plain executor costs a request less than anyio's worker threads.
    readers = concurrent.futures.ThreadPoolExecutor(READER_THREADS, thread_name_prefix="llava-serve-read")
    errors: collections.Counter = collections.Counter()
    started = int(time.time())

    def fail(error: ApiError, headers: dict | None = None) -> JSONResponse:
        errors[error.status] += 1
        return error_response(error, headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return fail(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return fail(ApiError(exc.status_code, message, code=code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        return fail(ApiError(400, f"invalid request: {exc.errors()}"))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return fail(ApiError(500, f"internal error ({type(exc).__name__}); see the server log"))

    if api_key is not None:
        app.add_middleware(_RequireKey, key=api_key, open_path="/" if page is not None else None, fail=fail)

    def ready_or_503():
        if engine.failed:
            raise ApiError(503, f"the model cannot serve: {engine.failed}", code="not_ready")
        if not engine.ready.is_set():
            raise ApiError(503, "the model is warming up; retry shortly", code="warming_up")

    @app.get("/health")
    async def health():
        ready_or_503()
        return {"status": "ok", "model": model_name, "queue": engine.queue_depth()}

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": started, "owned_by": "llava_jax"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str):
        if model_id != model_name:
            raise ApiError(404, f"no model {model_id!r}; this server serves {model_name!r}", code="model_not_found")
        return model_card()

    @app.get("/metrics")
    async def metrics():
        stats, sizes = engine.stats, engine.batch_sizes
        lines = [
            "# TYPE llava_serve_requests_total counter",
            f"llava_serve_requests_total {stats['requests']}",
            f"llava_serve_completed_total {stats['completed']}",
            f"llava_serve_cancelled_total {stats['cancelled']}",
            f"llava_serve_tokens_generated_total {stats['tokens']}",
            f"llava_serve_batches_total {stats['batches']}",
            f"llava_serve_batch_rows_total {stats['batch_rows']}",
            f"llava_serve_admitted_rows_total {stats['rows']}",
            f"llava_serve_admissions_total {stats['admissions']}",
            f"llava_serve_decode_steps_total {stats['decode_steps']}",
            f"llava_serve_row_steps_total {stats['row_steps']}",
            f"llava_serve_batch_errors_total {stats['batch_errors']}",
            f"llava_serve_max_batch_rows {max(sizes, default=0)}",
            f"llava_serve_queue_depth {engine.queue_depth()}",
            f"llava_serve_ready {int(engine.ready.is_set())}",
        ]
        lines += [f'llava_serve_batches_by_rows_total{{rows="{k}"}} {sizes[k]}' for k in sorted(sizes)]
        lines += [f'llava_serve_errors_total{{status="{k}"}} {errors[k]}' for k in sorted(errors)]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    if page is not None:

        @app.get("/", response_class=HTMLResponse)
        async def index():
            return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self' 'unsafe-inline' data:"})

    def prepare(request: ChatRequest):
        """Blocking part of a request (image read and decode, tokenisation): runs on a worker thread."""
        from llava_jax.infer.chat import load_pixels

        pixels = None
        if request.image_url is not None:
            image = fetch_image(request.image_url, image_policy, request.image_param)
            pixels = load_pixels(image, engine.config)
        try:
            ids = engine.encode(request.turns, has_image=pixels is not None, system=request.system)
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        context = engine.context
        if len(ids) >= context:
            raise ApiError(
                400,
                f"the prompt is {len(ids)} tokens (image included); the model's context is {context} tokens "
                "and at least one must be left for the answer",
                param="messages",
                code="context_length_exceeded",
            )
        max_tokens = request.max_tokens
        if max_tokens is None:
            max_tokens = engine.default_max_tokens(len(ids))
        elif len(ids) + max_tokens > context:
            raise ApiError(
                400,
                f"max_tokens={max_tokens} does not fit: the prompt is {len(ids)} tokens and the context "
                f"{context} (at most {context - len(ids)} new tokens)",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return ids, pixels, max_tokens

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        request_body = await read_json(request, max_body_bytes)
        chat = parse_chat_request(request_body)
        if chat.model is not None and chat.model != model_name:
            raise ApiError(
                404,
                f"no model {chat.model!r}; this server serves {model_name!r}",
                param="model",
                code="model_not_found",
            )
        ready_or_503()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(kind, payload):  # worker thread -> this request's event loop
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, payload))
            except RuntimeError:  # the loop is closed: the server is stopping
                pass

        rid = completion_id()
        with engine.arriving():  # a batch about to start waits for this request
            ids, pixels, max_tokens = await loop.run_in_executor(readers, prepare, chat)
            job = Job(ids, pixels, max_tokens, chat.sampling, chat.stop, sink, stream=chat.stream, request_id=rid)
            try:
                engine.submit(job)
            except QueueFull as e:
                raise ApiError(429, f"the server is busy: {e}; retry later", code="queue_full") from None
            except NotReady as e:
                raise ApiError(503, str(e), code="not_ready") from None
        if chat.stream:
            return StreamingResponse(
                _stream(job, events, rid, model_name, chat.include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            while True:
                try:
                    kind, payload = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
                except TimeoutError:
                    if await request.is_disconnected():
                        job.cancelled.set()
                        return PlainTextResponse("", status_code=499)
                    continue
                if kind == "done":
                    return JSONResponse(completion_body(rid, model_name, payload))
                if kind == "error":
                    raise ApiError(503 if "shutting down" in payload else 500, payload)
        finally:
            job.cancelled.set()  # no effect once done; frees the row if this handler was cancelled

    return app


class _RequireKey:
    """ASGI middleware: 401 unless `Authorization: Bearer <key>` (the page's own path excepted)."""

    def __init__(self, app, *, key: str, open_path: str | None, fail):
        self.app, self.key, self.open_path, self.fail = app, key.encode(), open_path, fail

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != self.open_path:
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                error = ApiError(
                    401, "missing or wrong API key (send Authorization: Bearer <key>)", code="invalid_api_key"
                )
                await self.fail(error, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _stream(job: Job, events: asyncio.Queue, rid: str, model: str, include_usage: bool):
    """Server-sent events in the OpenAI chunk format, ending with `data: [DONE]`.

    A client that goes away cancels this generator, which cancels the job: its row stops.
    """
    try:
        yield chunk_event(rid, model, {"role": "assistant", "content": ""})
        while True:
            kind, payload = await events.get()
            if kind == "delta":
                yield chunk_event(rid, model, {"content": payload})
            elif kind == "done":
                yield chunk_event(rid, model, {}, payload["finish_reason"])
                if include_usage:
                    yield sse(
                        {
                            "id": rid,
                            "object": "chat.completion.chunk",
                            "created": int(time.time()),
                            "model": model,
                            "choices": [],
                            "usage": usage(payload),
                        }
                    )
                break
            else:
                yield sse(ApiError(500, payload).body())
                break
        yield sse("[DONE]")
    finally:
        job.cancelled.set()
