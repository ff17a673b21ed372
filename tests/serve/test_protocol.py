"""Request validation: every malformed field is a 400 naming it; good requests become turns and settings."""

import pytest

from llava_jax.serve.batching import Sampling
from llava_jax.serve.errors import ApiError
from llava_jax.serve.protocol import parse_chat_request

HI = [{"role": "user", "content": "Hi"}]
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def test_turns_image_system_and_settings():
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is it?"}, IMAGE, {"type": "text", "text": "Now."}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
            {"role": "user", "content": "Colour?"},
        ],
        "max_tokens": 5,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 7,
        "stop": "\n",
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "ignored",
    }
    r = parse_chat_request(body)
    assert r.turns == [("user", "What is it?\nNow."), ("assistant", "A cat."), ("user", "Colour?")]
    assert r.image_url == IMAGE["image_url"]["url"] and r.image_param == "messages[1].content[1].image_url.url"
    assert r.system == "Be brief." and r.max_tokens == 5 and r.stop == ("\n",)
    assert r.sampling == Sampling(0.5, 0.9, 7) and r.stream and r.include_usage and r.model == "m"


def test_greedy_by_default_and_greedy_ignores_top_p_and_seed():
    assert parse_chat_request({"messages": HI}).sampling == Sampling()
    greedy = parse_chat_request({"messages": HI, "temperature": 0, "top_p": 0.5, "seed": 3}).sampling
    assert greedy == Sampling() and greedy.batch_key() == ("greedy",)
    seeded = Sampling(1.0, 1.0, 3)
    assert seeded.batch_key() != Sampling(1.0, 1.0, 3).batch_key()  # each seeded request runs alone
    assert Sampling(1.0, 0.9).batch_key() == Sampling(1.0, 0.9).batch_key() != Sampling(0.5, 0.9).batch_key()


@pytest.mark.parametrize(
    "body, param, words",
    [
        ([], None, "JSON object"),
        ({}, "messages", "non-empty list"),
        ({"messages": []}, "messages", "non-empty list"),
        ({"messages": ["hi"]}, "messages[0]", "object"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "one of"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "string or a list"),
        (
            {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            "messages[0].content[0].type",
            "unsupported",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text", "string"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].image_url",
            "non-empty",
        ),
        ({"messages": [{"role": "user", "content": " "}]}, "messages[0].content", "no text"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages[0].role", "alternate"),
        ({"messages": HI + [{"role": "system", "content": "x"}] + HI}, "messages[1]", "system message"),
        ({"messages": HI + [{"role": "assistant", "content": [IMAGE]}, *HI]}, "messages[1].content", "only user"),
        (
            {"messages": HI + [{"role": "assistant", "content": "a"}, {"role": "user", "content": [IMAGE]}]},
            "messages[2].content[0].image_url.url",
            "first user message",
        ),
        (
            {"messages": [{"role": "user", "content": [IMAGE, IMAGE]}]},
            "messages[0].content[1].image_url.url",
            "one image",
        ),
        ({"messages": HI + [{"role": "assistant", "content": "a"}]}, "messages", "last message"),
        ({"messages": HI, "max_tokens": 0}, "max_tokens", "[1,"),
        ({"messages": HI, "max_tokens": 2.5}, "max_tokens", "integer"),
        ({"messages": HI, "max_completion_tokens": True}, "max_completion_tokens", "integer"),
        ({"messages": HI, "temperature": -0.1}, "temperature", "[0.0, 2.0]"),
        ({"messages": HI, "temperature": "hot"}, "temperature", "number"),
        ({"messages": HI, "top_p": 0}, "top_p", "(0.0, 1.0]"),
        ({"messages": HI, "seed": 2**64}, "seed", "in ["),
        ({"messages": HI, "stop": ["a", ""]}, "stop", "empty"),
        ({"messages": HI, "stop": 5}, "stop", "string or a list"),
        ({"messages": HI, "stop": list("abcde")}, "stop", "at most 4"),
        ({"messages": HI, "stream": "yes"}, "stream", "true or false"),
        ({"messages": HI, "stream_options": 1}, "stream_options", "object"),
        ({"messages": HI, "n": 3}, "n", "one choice"),
        ({"messages": HI, "model": 1}, "model", "string"),
    ],
)
def test_bad_fields_are_400_naming_the_field(body, param, words):
    with pytest.raises(ApiError) as info:
        parse_chat_request(body)
    error = info.value
    assert error.status == 400 and error.param == param and words in error.message, error.body()
    assert error.body()["error"]["type"] == "invalid_request_error"
