"""encode_example: reference input ids, labels exact by construction, every bad input rejected."""

import copy

import numpy as np
import pytest

from llava_jax.data.conversation import move_image_to_front, render
from llava_jax.data.encode import (
    IGNORE_INDEX,
    DataError,
    encode_example,
    tokenizer_image_token,
)
from llava_jax.data.sentencepiece_tokens import for_tokenizer

IMG = -200
ISL = 7


def slow_ids(tokenizer, text):
    """`tokenizer(text).input_ids` of the slow tokenizer LLaVA used (its sentencepiece form when there is one)."""
    slow = for_tokenizer(tokenizer)
    return slow(text) if slow is not None else tokenizer(text).input_ids


def reference_tokenizer_image_token(prompt, tokenizer, image_token_index):
    """The LLaVA repo's `tokenizer_image_token`, restated for comparison."""
    chunks = [slow_ids(tokenizer, chunk) for chunk in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    separated = []
    for chunk in chunks:
        separated += [chunk, [image_token_index] * (offset + 1)]
    for piece in separated[:-1]:
        ids.extend(piece[offset:])
    return ids


def example(turns, image="img.jpg", sample_id="s"):
    out = {
        "id": sample_id,
        "conversations": [{"from": r, "value": v} for r, v in turns],
    }
    if image is not None:
        out["image"] = image
    return out


def encode(ex, tokenizer, template="vicuna_v1", max_length=2048, isl=ISL):
    return encode_example(
        ex,
        tokenizer,
        template=template,
        image_seq_length=isl,
        max_length=max_length,
        image_token_index=IMG,
    )


def supervised_runs(out):
    """Contiguous runs of supervised token ids."""
    runs, current = [], []
    for token, label in zip(out["input_ids"], out["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(int(token))
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


@pytest.mark.parametrize(
    "prompt",
    [
        "<image>\nWhat is this?",
        "Describe <image> this. ASSISTANT:",
        "no image here",
        "<image>",
        "a<image>",
    ],
)
def test_tokenizer_image_token_is_the_reference(tokenizer, prompt):
    expected = reference_tokenizer_image_token(prompt, tokenizer, IMG)
    assert tokenizer_image_token(prompt, tokenizer, image_token_index=IMG) == expected
    expanded = tokenizer_image_token(prompt, tokenizer, image_token_index=IMG, image_seq_length=5)
    assert expanded.count(IMG) == 5 * prompt.count("<image>")
    assert [t for t in expanded if t != IMG] == [t for t in expected if t != IMG]


CONVERSATIONS = {
    "single": [("human", "<image>\nWhat is this?"), ("gpt", "A cat on a mat.")],
    "image_after": [("human", "What color is the bus?\n<image>"), ("gpt", "Red.")],
    "multi_turn": [
        ("human", "<image>\nHow many people?"),
        ("gpt", "Two people."),
        ("human", "Where are they?"),
        ("gpt", "On the street."),
        ("human", "Anything else?"),
        ("gpt", "A dog, left of the car."),
    ],
    "unicode": [
        ("human", "<image>\nÜnïcödé? 日本語のテスト"),
        ("gpt", "café naïve 🐱 日本"),
    ],
    "space_digit_answers": [
        ("human", "<image>\nCount them."),
        ("gpt", "  42"),
        ("human", "Again?"),
        ("gpt", "3 cats and 1 dog"),
        ("human", "Newline?"),
        ("gpt", "\nyes "),
    ],
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("template", ["vicuna_v1", "llava_v1", "llava_hf"])
def test_labels_supervise_exactly_each_reply_and_its_separator(tokenizer, name, template):
    turns = CONVERSATIONS[name]
    out = encode(example(turns), tokenizer, template=template)
    placed = [(r, move_image_to_front(v, training=True) if "<image>" in v else v) for r, v in turns]
    prompt = render(template, placed)
    assert out["input_ids"].dtype == np.int32 and out["labels"].dtype == np.int32
    assert out["input_ids"].tolist() == tokenizer_image_token(
        prompt, tokenizer, image_token_index=IMG, image_seq_length=ISL
    )
    assert out["input_ids"].tolist().count(IMG) == ISL
    assert out["labels"][0] == IGNORE_INDEX and out["input_ids"][0] == tokenizer.bos_token_id
    assert (out["labels"][out["input_ids"] == IMG] == IGNORE_INDEX).all()
    sep2 = "</s>" if template != "llava_hf" else ""
    replies = [v for r, v in turns if r == "gpt"]
    runs = supervised_runs(out)
    assert [tokenizer.decode(run) for run in runs] == [reply + sep2 for reply in replies]
    assert out["image"] == "img.jpg"


def reference_v1_labels(prompt, tokenizer, input_ids):
    """The LLaVA repo's `preprocess_v1` masking (length heuristics), restated; None = mismatch."""
    target = list(input_ids)
    sep = " ASSISTANT: "
    cur = 1
    target[:1] = [IGNORE_INDEX]
    for i, rou in enumerate(prompt.split("</s>")):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(reference_tokenizer_image_token(rou, tokenizer, IMG))
        instruction_len = len(reference_tokenizer_image_token(parts[0], tokenizer, IMG)) - 2
        # LLaVA's correction for tokenizers >= 0.14; the slow tokenizer it trained with needs none.
        if i != 0 and not tokenizer.legacy and for_tokenizer(tokenizer) is None:
            round_len -= 1
            instruction_len -= 1
        target[cur : cur + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur += round_len
    target[cur:] = [IGNORE_INDEX] * (len(target) - cur)
    return target if cur == len(input_ids) else None


def test_agrees_with_reference_masking_where_the_reference_is_consistent(tokenizer):
    agreed = 0
    for turns in CONVERSATIONS.values():
        out = encode(example(turns), tokenizer, isl=1)
        placed = [(r, move_image_to_front(v, training=True) if "<image>" in v else v) for r, v in turns]
        reference = reference_v1_labels(render("vicuna_v1", placed), tokenizer, out["input_ids"].tolist())
        if reference is not None:
            assert out["labels"].tolist() == reference
            agreed += 1
    # With the slow (sentencepiece) tokenization LLaVA trained with, the reference's
    # length arithmetic holds for every sample, and the labels are the same.
    assert agreed == len(CONVERSATIONS)


def test_text_only_sample_has_no_image(tokenizer):
    out = encode(example([("human", "Hi there?"), ("gpt", "Hello.")], image=None), tokenizer)
    assert out["image"] is None and IMG not in out["input_ids"]
    assert [tokenizer.decode(r) for r in supervised_runs(out)] == ["Hello.</s>"]


def test_leading_assistant_turn_is_dropped_as_in_the_reference(tokenizer):
    turns = [("gpt", "ignored"), ("human", "<image>\nQ?"), ("gpt", "A.")]
    out = encode(example(turns), tokenizer)
    assert [tokenizer.decode(r) for r in supervised_runs(out)] == ["A.</s>"]


def test_plain_template(tokenizer):
    caption = "A red bus on the street, 2 people."
    ex = example([("human", "Describe this.\n<image>"), ("gpt", caption)])
    out = encode(ex, tokenizer, template="plain")
    tail = tokenizer(caption + "\n").input_ids[1:]
    expected = [tokenizer.bos_token_id] + [IMG] * ISL + tail
    assert out["input_ids"].tolist() == expected
    assert (out["labels"][: 1 + ISL] == IGNORE_INDEX).all()
    assert out["labels"][1 + ISL :].tolist() == tail
    assert tokenizer.decode(out["labels"][1 + ISL :]) == caption + "\n"


def test_placeholder_id_is_a_parameter_never_the_tokenized_marker(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    marker_id = tok.convert_tokens_to_ids("<image>")
    ex = example(CONVERSATIONS["single"])
    for index in (32000, -200, 5):
        out = encode_example(
            ex,
            tok,
            template="vicuna_v1",
            image_seq_length=3,
            max_length=512,
            image_token_index=index,
        )
        ids = out["input_ids"].tolist()
        assert marker_id not in ids
        start = ids.index(index)
        assert ids[start : start + 3] == [index] * 3


def test_truncation(tokenizer):
    long_answer = " ".join(["word"] * 400)
    out = encode(
        example([("human", "Q?"), ("gpt", long_answer)], image=None),
        tokenizer,
        max_length=300,
    )
    assert len(out["input_ids"]) == len(out["labels"]) == 300
    full = encode(example([("human", "Q?"), ("gpt", long_answer)], image=None), tokenizer)
    np.testing.assert_array_equal(out["input_ids"], full["input_ids"][:300])
    # An image sample whose placeholders would be cut is dropped, not cut.
    ex = example([("human", "<image>\nQ?"), ("gpt", long_answer)])
    whole = encode(ex, tokenizer)
    image_end = whole["input_ids"].tolist().index(IMG) + ISL
    first_supervised = int(np.flatnonzero(whole["labels"] != IGNORE_INDEX)[0])
    ok = encode(ex, tokenizer, max_length=first_supervised + 1)
    assert ok["input_ids"].tolist().count(IMG) == ISL and (ok["labels"] != IGNORE_INDEX).sum() == 1
    with pytest.raises(DataError) as e:
        encode(ex, tokenizer, max_length=image_end - 1)
    assert e.value.reason == "image_cut_by_truncation" and e.value.sample_id == "s"
    # Cut after the image and the question: nothing left to learn from.
    with pytest.raises(DataError, match="no_supervised_tokens"):
        encode(ex, tokenizer, max_length=first_supervised)


BAD = {  # case: (example, reason)
    "no_conversations": ({"id": "b1", "image": "x.jpg"}, "no_conversations"),
    "two_humans": (
        example([("human", "<image>\nQ"), ("human", "Q2"), ("gpt", "A")], sample_id="b2"),
        "not_alternating",
    ),
    "unknown_role": (
        example([("system", "x"), ("gpt", "A")], None, "b3"),
        "not_alternating",
    ),
    "ends_with_human": (
        example([("human", "<image>\nQ"), ("gpt", "A"), ("human", "Q")]),
        "not_alternating",
    ),
    "marker_in_text_only": (
        example([("human", "<image>\nQ"), ("gpt", "A")], image=None),
        "image_token_in_text_only",
    ),
    "no_marker": (example([("human", "Q"), ("gpt", "A")]), "missing_image_token"),
    "two_markers": (
        example([("human", "<image>\nQ <image>"), ("gpt", "A")]),
        "multiple_image_tokens",
    ),
    "two_markers_two_turns": (
        example([("human", "<image>\nQ"), ("gpt", "A"), ("human", "<image>"), ("gpt", "B")]),
        "multiple_image_tokens",
    ),
    "marker_in_answer": (
        example([("human", "Q"), ("gpt", "A <image>")]),
        "image_token_in_answer",
    ),
    "empty_answer": (example([("human", "<image>\nQ"), ("gpt", "")]), "empty_turn"),
    "blank_answer": (example([("human", "<image>\nQ"), ("gpt", "  \n")]), "empty_turn"),
    "empty_question": (
        example([("human", ""), ("gpt", "A")], image=None),
        "empty_turn",
    ),
    "lone_surrogate": (
        example([("human", "<image>\nQ\ud800"), ("gpt", "A")]),
        "non_utf8",
    ),
    "turn_without_value": (
        {"id": "b9", "conversations": [{"from": "human"}]},
        "malformed",
    ),
    "value_not_text": (
        {
            "id": "b10",
            "conversations": [
                {"from": "human", "value": 3},
                {"from": "gpt", "value": "A"},
            ],
        },
        "malformed",
    ),
    "unreadable_record": (
        {"id": "b11", "_error": "bad bytes", "_reason": "non_utf8"},
        "non_utf8",
    ),
    "not_a_dict": (["x"], "malformed"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_raise_with_id_and_reason(tokenizer, case):
    ex, reason = BAD[case]
    with pytest.raises(DataError) as e:
        encode(ex, tokenizer)
    assert e.value.reason == reason
    expected_id = str(ex.get("id")) if isinstance(ex, dict) else "?"
    assert e.value.sample_id == expected_id
    assert expected_id in str(e.value) and reason in str(e.value)


def test_plain_needs_an_image_and_one_round(tokenizer):
    with pytest.raises(DataError, match="no_image"):
        encode(
            example([("human", "Q"), ("gpt", "A")], image=None),
            tokenizer,
            template="plain",
        )
    with pytest.raises(DataError, match="not_alternating"):
        encode(example(CONVERSATIONS["multi_turn"]), tokenizer, template="plain")


def test_tokenization_mismatch_is_detected(tmp_path):
    """A tokenizer whose tokens cross a reply boundary: the sample is dropped, never mislabelled."""
    import transformers
    from tokenizers import Tokenizer, models, processors, trainers

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tk.train_from_iterator(["USER: ok? ASSISTANT: Yes"] * 50 + ["abcdefghijklmnopqrstuvwxyz .,?'"], trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(tmp_path)
    merging = transformers.AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(DataError) as e:
        encode(
            example([("human", "ok?"), ("gpt", "Yes")], image=None, sample_id="m"),
            merging,
        )
    assert e.value.reason == "tokenization_mismatch" and e.value.sample_id == "m"
