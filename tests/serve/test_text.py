"""Answer text as tokens arrive: deltas only extend what was sent and add up to `Llava.chat`'s answer."""

import pytest

from llava_jax.serve.text import AnswerText


@pytest.fixture(scope="module")
def tok():
    from llava_jax.demo.synthetic.tokenizer import synthetic_tokenizer

    return synthetic_tokenizer()


def _stream(text: AnswerText, ids):
    deltas = [text.delta(ids[:k]) for k in range(1, len(ids) + 1)]
    return deltas + [text.delta(ids, final=True)]


def test_deltas_add_up_to_the_final_answer(tok):
    ids = tok(" The red circle is on the left.  ", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    text = AnswerText(tok, {tok.eos_token_id}, ())
    deltas = _stream(text, ids)
    assert "".join(deltas) == text.final(ids) == "The red circle is on the left."
    assert sum(1 for d in deltas if d) >= 4  # word by word, not all at the end


def test_stop_sequences_cut_and_are_held_back_while_partial(tok):
    ids = tok("Yes it is STOP and more", add_special_tokens=False)["input_ids"]
    text = AnswerText(tok, {tok.eos_token_id}, ("STOP",))
    k = text.stop_token(ids, 1)
    assert k is not None and "STOP" in text.decode(ids[:k]) and "STOP" not in text.decode(ids[: k - 1])
    deltas = _stream(text, ids[:k])
    assert "".join(deltas) == text.final(ids) == "Yes it is"
    assert all("S" not in d for d in deltas)  # "S", "ST", ... never sent before the stop completes
    assert AnswerText(tok, set(), ("zzz",)).stop_token(ids, 1) is None


def test_bytes_of_one_character_are_held_until_complete(tok):
    ids = tok("caf\u00e9 \u2603 ok", add_special_tokens=False)["input_ids"]
    assert len(ids) > len("caf\u00e9 \u2603 ok".split())  # byte-fallback pieces
    text = AnswerText(tok, set(), ())
    deltas = _stream(text, ids)
    assert "".join(deltas) == "caf\u00e9 \u2603 ok" and not any("\ufffd" in d for d in deltas)
