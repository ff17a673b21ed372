"""`llava-jax chat`: one-shot answers, the interactive session, and clear errors for bad input."""

import io

import pytest
from PIL import Image

from llava_jax.cli import build_parser, main
from llava_jax.cli import chat as cli_chat
from llava_jax.infer.chat import chat


@pytest.fixture(scope="module")
def model_dir(chat_model, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("chat_model"))
    chat_model.save(directory)
    return directory


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    from tests.data.helpers import photos

    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(photos()[0][:200, :300]).save(path)
    return str(path)


def _args(*argv):
    return build_parser("chat").parse_args(["chat", *argv])


def test_one_shot_prompt_prints_the_answer(chat_model, model_dir, image_path, capsys):
    argv = [
        "chat",
        "--model",
        model_dir,
        "--image",
        image_path,
        "--prompt",
        "What is this?",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
    ]
    assert main(argv) == 0
    expected = chat(chat_model, image_path, "What is this?", max_new_tokens=8)[0]
    assert capsys.readouterr().out.strip() == expected


def test_interactive_session_keeps_the_conversation(chat_model, model_dir, image_path):
    out = io.StringIO()
    args = _args("--model", model_dir, "--image", image_path, "--temperature", "0", "--max-new-tokens", "8")
    assert cli_chat.run(args, stdin=io.StringIO("What is this?\nAnd the colour?\n"), stdout=out) == 0
    text = out.getvalue()
    assert text.count("USER: ") == 3 and text.count("ASSISTANT: ") == 2
    first = chat(chat_model, image_path, "What is this?", max_new_tokens=8)[0]
    turns = [("user", "What is this?"), ("assistant", first), ("user", "And the colour?")]
    second = chat(chat_model, image_path, [turns], max_new_tokens=8)[0]
    assert f"ASSISTANT: {first}" in text and f"ASSISTANT: {second}" in text


def test_bad_image_and_model_are_clear_errors(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert cli_chat.run(_args("--model", model_dir, "--image", str(bad), "--prompt", "x")) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert cli_chat.run(_args("--model", str(tmp_path / "nowhere"), "--prompt", "x")) == 2
    assert "cannot load model" in capsys.readouterr().err


def test_too_long_prompt_is_a_clear_error(model_dir, image_path, capsys):
    args = _args("--model", model_dir, "--image", image_path, "--prompt", "the cat " * 600)
    assert cli_chat.run(args, stdout=io.StringIO()) == 2
    assert "longer than the model's context" in capsys.readouterr().err
