"""The OpenAI chat-completions format: request validation and the response and stream-chunk bodies.

A request's `messages` become `(role, text)` turns in the model's template
(earlier assistant turns included) and at most one image, which must be in
the first user message (LLaVA-1.5 puts the one image of a conversation at the
front of its first turn). Fields this server cannot honour are refused (`n`
other than 1) or, when they change nothing about the answer (`user`,
`presence_penalty` 0, ...), ignored. Unlike OpenAI's default temperature 1,
an absent `temperature` means greedy decoding, as `Llava.chat`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

from llava_jax.serve.errors import ApiError
from llava_jax.serve.jobs import Sampling

MAX_STOP = 4
ROLES = ("system", "user", "assistant")


@dataclasses.dataclass
class ChatRequest:
    """A validated chat request.

    turns: `(role, text)` alternating user/assistant, ending with the user's; image_url: the one
    image's URL (or None) and image_param where it was given; system: replaces the template's
    system prompt; max_tokens: None for the default (what `Llava.chat` uses).
    """

    turns: list[tuple[str, str]]
    image_url: str | None = None
    image_param: str | None = None
    system: str | None = None
    max_tokens: int | None = None
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    model: str | None = None


def _bad(message: str, param: str | None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _number(body: dict, name: str, default: float, low: float, high: float, *, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{name} must be a number, got {json.dumps(value)[:40]}", name)
    if value > high or value < low or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise _bad(f"{name} must be in {interval}, got {value}", name)
    return float(value)


def _integer(body: dict, name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer, got {json.dumps(value)[:40]}", name)
    if not low <= value <= high:
        raise _bad(f"{name} must be in [{low}, {high}], got {value}", name)
    return value


def _stop(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP:
        raise _bad(f"stop takes at most {MAX_STOP} sequences, got {len(stops)}", "stop")
    if any(not s for s in stops):
        raise _bad("stop sequences must not be empty", "stop")
    return tuple(stops)


def _content(message: dict, i: int) -> tuple[str, list[tuple[str, str]]]:
    """A message's text (parts joined by newlines) and its image URLs with their params."""
    content = message.get("content")
    where = f"messages[{i}].content"
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or a list of content parts", where)
    texts, images = [], []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _bad(f"{at}.text must be a string", f"{at}.text")
            texts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise _bad(f"{at}.image_url.url must be a non-empty string", f"{at}.image_url")
            images.append((url, f"{at}.image_url.url"))
        else:
            raise _bad(f"{at} has unsupported type {json.dumps(kind)}: use 'text' or 'image_url'", f"{at}.type")
    return "\n".join(texts), images


def parse_chat_request(body) -> ChatRequest:
    """Validate a decoded `POST /v1/chat/completions` body.

    Raises:
      ApiError 400 naming the field at fault.
    """
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    if body.get("n", 1) != 1:
        raise _bad("n must be 1: this server returns one choice per request", "n")
    system, turns, images = None, [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}] must be an object", f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(
                f"messages[{i}].role must be one of {list(ROLES)}, got {json.dumps(role)}", f"messages[{i}].role"
            )
        text, urls = _content(message, i)
        if role == "system":
            if i != 0 or urls:
                raise _bad("a system message may only come first and hold text", f"messages[{i}]")
            system = text
            continue
        if urls and role != "user":
            raise _bad("only user messages may hold images", f"messages[{i}].content")
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise _bad(
                f"messages[{i}] is from the {role}: after the optional system message, messages must "
                "alternate user/assistant, starting with the user",
                f"messages[{i}].role",
            )
        if urls and turns:
            raise _bad(
                "the image must be in the first user message (LLaVA-1.5 takes one image, at the start "
                "of the conversation)",
                urls[0][1],
            )
        if not text.strip() and not urls:
            raise _bad(f"messages[{i}] has no text", f"messages[{i}].content")
        images += urls
        turns.append((role, text))
    if len(images) > 1:
        raise _bad(
            f"this model takes one image per conversation, got {len(images)}", images[1][1], code="too_many_images"
        )
    if not turns or turns[-1][0] != "user":
        raise _bad("the last message must be from the user", "messages")
    max_tokens = _integer(body, "max_tokens", 1, 2**31 - 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens", 1, 2**31 - 1)
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model must be a string", "model")
    return ChatRequest(
        turns=turns,
        image_url=images[0][0] if images else None,
        image_param=images[0][1] if images else None,
        system=system,
        max_tokens=max_tokens,
        sampling=Sampling(temperature, top_p if temperature else 1.0, seed if temperature else None),
        stop=_stop(body.get("stop")),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        model=model,
    )


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage(done: dict) -> dict:
    """The `usage` object from the engine's "done" payload."""
    return {
        "prompt_tokens": done["prompt_tokens"],
        "completion_tokens": done["completion_tokens"],
        "total_tokens": done["prompt_tokens"] + done["completion_tokens"],
    }


def completion_body(request_id: str, model: str, done: dict) -> dict:
    """A whole `chat.completion` response."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": done["text"]},
                "finish_reason": done["finish_reason"],
            }
        ],
        "usage": usage(done),
    }


def chunk_event(request_id: str, model: str, delta: dict, finish_reason: str | None = None, **extra) -> bytes:
    """One server-sent event holding a `chat.completion.chunk`."""
    chunk = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        **extra,
    }
    return sse(chunk)


def sse(payload) -> bytes:
    """`data: <json>` and the blank line that ends an event (`[DONE]` as is)."""
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
