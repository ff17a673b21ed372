"""`chat`: prompts, images and answers; batch vs one at a time; bad input gives clear errors."""

import numpy as np
import pytest
from PIL import Image

from llava_jax.infer.chat import ImageError, build_prompt, chat, encode_batch
from llava_jax.infer.generate import generate

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@pytest.fixture(scope="module")
def photos():
    from tests.data.helpers import photos

    china, flower = photos()
    return [Image.fromarray(china), Image.fromarray(flower[100:300, 50:450])]


def test_prompt_puts_the_image_first_like_llava():
    assert build_prompt("What is this?", True) == f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT:"
    assert build_prompt("What is this?\n<image>", True) == f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT:"
    assert build_prompt("Hi", False) == f"{SYSTEM} USER: Hi ASSISTANT:"
    turns = [("user", "What is this?"), ("assistant", "A cat."), ("user", "Color?")]
    assert (
        build_prompt(turns, True)
        == f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: Color? ASSISTANT:"
    )
    assert build_prompt("Describe.", True, "llava_hf") == "USER: <image>\nDescribe. ASSISTANT:"


def test_chat_answers_match_generate(chat_model, photos):
    """The answer is the decoded greedy tokens of the encoded prompt, cut at EOS."""
    answer = chat(chat_model, photos[0], "What is in the image?", max_new_tokens=8)
    assert isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], str)
    ids, pixels, mask = encode_batch(chat_model, [photos[0]], ["What is in the image?"])
    assert pixels.shape == (1, 3, 28, 28)
    assert (ids == chat_model.config.image_token_index).sum() == chat_model.config.image_seq_length
    tokens = generate(chat_model, ids, pixels, mask, max_new_tokens=8, pad_to_multiple=16)[0]
    tokens = [int(t) for t in tokens]
    tokens = tokens[: tokens.index(2)] if 2 in tokens else tokens
    assert answer[0] == chat_model.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def test_batch_answers_equal_one_at_a_time(chat_model, photos):
    images = [photos[0], photos[1], None]
    prompts = ["What is in the image?", "Describe the scene in detail please.", "Who are you?"]
    batch = chat(chat_model, images, prompts, max_new_tokens=8)
    single = [chat(chat_model, im, p, max_new_tokens=8)[0] for im, p in zip(images, prompts)]
    assert batch == single
    # One image for many prompts, and a multi-turn conversation.
    both = chat(chat_model, photos[0], prompts[:2], max_new_tokens=8)
    assert both[0] == chat(chat_model, photos[0], prompts[0], max_new_tokens=8)[0]
    turns = [("user", "What is this?"), ("assistant", both[0] or "A photo."), ("user", "Color?")]
    assert len(chat(chat_model, photos[0], [turns], max_new_tokens=8)) == 1


def test_chat_streams_and_samples_reproducibly(chat_model, photos):
    deltas = []
    answer = chat(chat_model, photos[1], "Describe.", max_new_tokens=8, stream=lambda d: deltas.append(d[0]))
    assert "".join(deltas).strip() == answer[0]
    kw = {"max_new_tokens": 8, "temperature": 1.0, "top_p": 0.9}
    a = chat(chat_model, photos[1], "Describe.", seed=5, **kw)
    assert a == chat(chat_model, photos[1], "Describe.", seed=5, **kw)


def test_image_paths_are_read(chat_model, photos, tmp_path):
    path = tmp_path / "photo.jpg"
    photos[0].save(path, quality=95)
    from_path = chat(chat_model, str(path), "What?", max_new_tokens=8)
    assert from_path == chat(chat_model, Image.open(path), "What?", max_new_tokens=8)


# ------------------------------------------------------------------------------ bad input
def test_unreadable_or_non_image_file(chat_model, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    with pytest.raises(ImageError, match="cannot read image.*notes.jpg"):
        chat(chat_model, str(text), "What?")
    with pytest.raises(ImageError, match="cannot read image.*missing.png"):
        chat(chat_model, str(tmp_path / "missing.png"), "What?")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        chat(chat_model, str(empty), "What?")
    truncated = tmp_path / "cut.png"
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, format="PNG")
    truncated.write_bytes(buf.getvalue()[:40])
    with pytest.raises(ImageError):
        chat(chat_model, str(truncated), "What?")


def test_marker_and_image_counts_must_agree(chat_model, photos):
    with pytest.raises(ValueError, match="2 <image> markers but one image"):
        chat(chat_model, photos[0], "<image> and <image>?")
    with pytest.raises(ValueError, match="marker but no image"):
        chat(chat_model, None, "<image>\nWhat is this?")
    with pytest.raises(ValueError, match="2 images for 3 prompts"):
        chat(chat_model, photos, ["a", "b", "c"])
    # HF-style inputs: placeholders for one image per row, but one image given for two rows.
    ids, pixels, mask = encode_batch(chat_model, photos, ["a", "b"])
    with pytest.raises(ValueError, match=r"placeholders for 2 image\(s\).*but 1 image\(s\)"):
        generate(chat_model, ids, pixels[:1], mask, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"placeholders for 2 image\(s\).*but 0 image\(s\)"):
        generate(chat_model, ids, None, mask, max_new_tokens=2)


def test_prompt_longer_than_context(chat_model, photos):
    context = chat_model.config.llm.max_position_embeddings
    long_prompt = "the cat sits on the mat " * context
    with pytest.raises(ValueError, match=f"longer than the model's context of {context} tokens"):
        chat(chat_model, photos[0], long_prompt)


def test_max_new_tokens_overflowing_the_cache(chat_model, photos):
    context = chat_model.config.llm.max_position_embeddings
    with pytest.raises(ValueError, match="max_new_tokens=.*would overflow the context"):
        chat(chat_model, photos[0], "What?", max_new_tokens=context)
    ids, pixels, mask = encode_batch(chat_model, [photos[0]], ["What?"])
    small = ids.shape[1] + 10
    with pytest.raises(ValueError, match=f"would overflow the KV cache.*max_len={small}"):
        generate(chat_model, ids, pixels, mask, max_new_tokens=30, max_len=small)
    with pytest.raises(ValueError, match="left padding"):
        generate(chat_model, ids, pixels, np.concatenate([mask[:, 1:], [[False]]], axis=1), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(chat_model, ids, pixels, mask, max_new_tokens=0)


def test_no_tokenizer_is_a_clear_error(chat_model, photos):
    import dataclasses

    bare = dataclasses.replace(chat_model, tokenizer=None)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        chat(bare, photos[0], "What?")
    with pytest.raises(ValueError, match="need the model's tokenizer"):
        generate(bare, np.ones((1, 3), np.int32), max_new_tokens=2, stop_strings=["x"])
