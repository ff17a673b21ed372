"""Templates render byte-identically to the LLaVA repo's `conversation.py` (literal strings)."""

import pytest

from llava_jax.data.conversation import (
    LLAVA_HF,
    generation_prompt,
    get_template,
    move_image_to_front,
    render,
    training_segments,
)

VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# The llava-hf checkpoints' chat template, as shipped with them.
HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def test_vicuna_v1_single_turn_generation_prompt():
    assert generation_prompt("vicuna_v1", "What is this?") == (VICUNA + " USER: <image>\nWhat is this? ASSISTANT:")
    assert generation_prompt("v1", "What is this?", image=False) == (VICUNA + " USER: What is this? ASSISTANT:")


def test_vicuna_v1_multi_turn():
    turns = [
        ("USER", "What is this?"),
        ("ASSISTANT", "A cat."),
        ("USER", "Color?"),
        ("ASSISTANT", None),
    ]
    assert render("vicuna_v1", turns, image=True) == (
        VICUNA + " USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: Color? ASSISTANT:"
    )
    done = turns[:3] + [("ASSISTANT", "Black.")]
    assert render("vicuna_v1", done, image=True) == (
        VICUNA + " USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: Color? ASSISTANT: Black.</s>"
    )
    # The data's role names work too.
    data_turns = [("human", "What is this?"), ("gpt", "A cat.")]
    assert render("vicuna_v1", data_turns) == VICUNA + " USER: What is this? ASSISTANT: A cat.</s>"


def test_llava_v1_system_prompt():
    assert generation_prompt("llava_v1", "Hi") == LLAVA + " USER: <image>\nHi ASSISTANT:"


def test_image_moved_to_front():
    # As `get_prompt` with an image: marker removed, rest stripped, "<image>\n" in front.
    prompt = render(
        "vicuna_v1",
        [("user", "What is this?\n<image>"), ("assistant", None)],
        image=True,
    )
    assert prompt == VICUNA + " USER: <image>\nWhat is this? ASSISTANT:"
    assert move_image_to_front("  Describe <image> it. ") == "<image>\nDescribe  it."
    # Training (`preprocess_multimodal`) strips again, so a bare marker stays bare.
    assert move_image_to_front("<image>", training=True) == "<image>"
    assert move_image_to_front("<image>") == "<image>\n"
    assert move_image_to_front("Q?\n<image>", training=True) == "<image>\nQ?"


def test_plain():
    # get_prompt of the PLAIN style: messages followed by "\n", empty ones omitted.
    assert render("plain", [("user", "<image>"), ("assistant", None)]) == "<image>\n"
    assert render("plain", [("user", "Q"), ("assistant", None)], image=True) == "<image>\nQ\n"
    # Training text is preprocess_plain's: the image, the caption, "\n".
    segments = training_segments("plain", [("human", "<image>\nDescribe."), ("gpt", "A red bus.")])
    assert segments == [("<image>", False), ("A red bus.\n", True)]


def test_llava_hf_matches_the_checkpoint_chat_template(tokenizer):
    assert generation_prompt("llava_hf", "What is this?") == "USER: <image>\nWhat is this? ASSISTANT:"
    turns = [("user", "What is this?"), ("assistant", "A cat."), ("user", "Color?")]
    ours = generation_prompt(LLAVA_HF, turns)
    assert ours == "USER: <image>\nWhat is this? ASSISTANT: A cat. USER: Color? ASSISTANT:"
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "Color?"}]},
    ]
    hf = tokenizer.apply_chat_template(
        messages,
        chat_template=HF_CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert ours == hf


def test_training_segments_concatenate_to_the_prompt():
    turns = [
        ("human", "<image>\nQ1?"),
        ("gpt", "A1."),
        ("human", "Q2?"),
        ("gpt", " 42"),
    ]
    for name in ("vicuna_v1", "llava_v1", "llava_hf"):
        segments = training_segments(name, turns)
        assert "".join(text for text, _ in segments) == render(name, turns)
        supervised = [text for text, flag in segments if flag]
        sep2 = get_template(name).sep2.strip()  # a whitespace separator is not supervised
        assert supervised == [" A1." + sep2, "  42" + sep2]


def test_errors():
    with pytest.raises(ValueError, match="unknown template"):
        get_template("chatml")
    with pytest.raises(ValueError, match="alternate"):
        render("vicuna_v1", [("gpt", "hi")])
    with pytest.raises(ValueError, match="alternate"):
        render("vicuna_v1", [("human", "a"), ("human", "b")])
    with pytest.raises(ValueError, match="unknown role"):
        render("vicuna_v1", [("system", "a")])
    with pytest.raises(ValueError, match="last turn"):
        generation_prompt("vicuna_v1", [("user", "a"), ("assistant", "b")])
    with pytest.raises(ValueError, match="one user and one assistant"):
        training_segments("plain", [("human", "<image>"), ("gpt", "a"), ("human", "b"), ("gpt", "c")])
