"""Token ids equal LLaVA's: the `sentencepiece` package itself and transformers 4.31 are the references.

`llava_431_golden.json` holds ids and labels made by LLaVA's own algorithm
(restated in `make_llava_431_golden.py`) with transformers 4.31.0's slow
`LlamaTokenizer`, the version LLaVA-1.5 trained with. The other tests build the
expected ids from `sentencepiece.SentencePieceProcessor` directly.
"""

import hashlib
import json
import os
import random

import numpy as np
import pytest
from PIL import Image

from llava_jax.config import LlavaConfig
from llava_jax.convert.loaders import LoadedModel
from llava_jax.data.conversation import move_image_to_front, render, training_segments
from llava_jax.data.encode import IGNORE_INDEX, encode_example, tokenizer_image_token, validate_turns
from llava_jax.data.sentencepiece_tokens import for_tokenizer, save_tokenizer
from llava_jax.presets import tiny
from tests import released_fixtures as rf

IMG = -200
GOLDEN = os.path.join(os.path.dirname(__file__), "llava_431_golden.json")
SPIECE = "\u2581"


@pytest.fixture(scope="module")
def golden():
    with open(GOLDEN, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """legacy -> the released tokenizer files loaded with `AutoTokenizer` (as `llava_jax.load` does)."""
    from transformers import AutoTokenizer

    out = {}
    for legacy in (False, True):
        directory = rf.write_slow_tokenizer(str(tmp_path_factory.mktemp(f"tok{int(legacy)}")), legacy=legacy)
        out[legacy] = AutoTokenizer.from_pretrained(directory)
    return out


@pytest.fixture(scope="module")
def sp():
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=rf.TOKENIZER_MODEL)


def sentencepiece_llava_ids(prompt: str, sp, legacy: bool) -> list[int]:
    """LLaVA's ids of a prompt from `sentencepiece` directly.

    Split at `<image>` (one sentinel each), BOS once; each chunk split at `</s>`
    (id 2) and every piece encoded by sentencepiece with its dummy prefix, except that
    without `legacy` a piece after `</s>` that does not start with a space loses the
    prefix from its first token (transformers 4.31's slow LlamaTokenizer).
    """
    ids = [sp.bos_id()]
    for k, chunk in enumerate(prompt.split("<image>")):
        if k:
            ids.append(IMG)
        for j, part in enumerate(chunk.split("</s>")):
            if j:
                ids.append(sp.eos_id())
            if not part:
                continue
            text = part if legacy else part.replace(SPIECE, " ")
            pieces = sp.encode(text, out_type=str)
            if not legacy and j and not text.startswith(" ") and pieces[0].startswith(SPIECE):
                pieces = ([pieces[0][1:]] if len(pieces[0]) > 1 else []) + pieces[1:]
            ids += [sp.piece_to_id(p) for p in pieces]
    return ids


def example(turns, has_image=True):
    out = {"id": "s", "conversations": [{"from": r, "value": v} for r, v in turns]}
    if has_image:
        out["image"] = "x.jpg"
    return out


def encode(turns, tokenizer, template="vicuna_v1", has_image=True, isl=1):
    return encode_example(
        example(turns, has_image),
        tokenizer,
        template=template,
        image_seq_length=isl,
        max_length=4096,
        image_token_index=IMG,
    )


# ------------------------------------------------------------------- transformers 4.31
def test_golden_was_made_with_this_tokenizer(golden):
    with open(rf.TOKENIZER_MODEL, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert golden["transformers"] == "4.31.0"
    assert golden["tokenizer_sha256"] == digest, "tests/assets/tokenizer.model changed: rerun make_llava_431_golden.py"


def test_training_ids_and_labels_are_llava_431(golden, tokenizers):
    for case in golden["cases"]:
        tok = tokenizers[case["legacy"]]
        turns = [tuple(t) for t in case["turns"]]
        template = case["template"]
        out = encode(turns, tok, template=template, has_image=case["has_image"])
        where = f"{case['name']} (legacy={case['legacy']})"
        _, placed, _ = validate_turns(example(turns, case["has_image"]), template)
        assert "".join(p for p, _ in training_segments(template, placed)) == case["prompt"], where
        assert out["input_ids"].tolist() == case["input_ids"], where
        if case["labels"] is not None:
            assert out["labels"].tolist() == case["labels"], where
        else:
            # The reference splits rounds at a `</s>` typed in a question and gives up on the
            # sample; here the question is masked and the reply alone supervised.
            runs = tok.decode([t for t in out["labels"].tolist() if t != IGNORE_INDEX])
            assert runs == turns[-1][1] + "</s>", where


def test_generation_ids_are_llava_431_through_chat_and_evaluation(golden, tokenizers):
    from llava_jax.eval.model_answerer import ModelAnswerer
    from llava_jax.eval.runner import Request
    from llava_jax.infer.chat import build_prompt, encode_batch

    questions = {  # the chat input that renders each golden prompt
        "ask_image": ("What is this?", True),
        "ask_image_only": ("<image>", True),
        "ask_second_turn": ([("user", "What is this?"), ("assistant", "A cat."), ("user", "Color? ")], True),
        "ask_text": ("  Hello  there ", False),
    }
    config: LlavaConfig = tiny(vocab_size=rf.VOCAB, image_token_index=rf.VOCAB)
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    for case in golden["generation"]:
        tok = tokenizers[case["legacy"]]
        model = LoadedModel(config, None, tok)
        question, has_image = questions[case["name"]]
        assert build_prompt(question, has_image) == case["prompt"], case["name"]
        expected = case["input_ids"]
        assert tokenizer_image_token(case["prompt"], tok, image_token_index=IMG) == expected, case["name"]
        # chat: left-padded rows with image_seq_length placeholders per image.
        ids, _, mask = encode_batch(model, [image if has_image else None], [question])
        row = _collapse(ids[0][mask[0]].tolist(), config)
        assert row == expected, case["name"]
        # evaluation: the same prompt through the answerer's batching.
        answerer = ModelAnswerer(model, model_id="m", batch_size=1, length_multiple=8)
        prepared = answerer.prepare([Request(case["prompt"], image if has_image else None, 8)])
        row = prepared.input_ids[0][prepared.attention_mask[0] == 1].tolist()
        assert _collapse(row, config) == expected, case["name"]


def _collapse(ids: list[int], config) -> list[int]:
    """Each run of `image_seq_length` placeholders -> one reference sentinel."""
    out, i = [], 0
    while i < len(ids):
        if ids[i] == config.image_token_index:
            assert ids[i : i + config.image_seq_length] == [config.image_token_index] * config.image_seq_length
            out.append(IMG)
            i += config.image_seq_length
        else:
            out.append(ids[i])
            i += 1
    return out


# ------------------------------------------------------------------ sentencepiece itself
WORDS = ["the", "cat", "dog", "sits", "on", "a", "mat", "red", "bus", "Ünïcödé", "日本語", "café", "🐱", "42", "3.5"]


def random_conversation(rng: random.Random):
    """Turns with the image first, last or alone, 1-3 rounds, unicode, stray spaces and newlines."""

    def text(lo=1, hi=8):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))
        return rng.choice(["", " ", "  ", "\n"]) + words + rng.choice(["", ".", "?", " ", "  ", "\n"])

    where = rng.choice(["first", "last", "only", "none"])
    question = {"first": "<image>\n" + text(), "last": text() + "\n<image>", "only": "<image>", "none": text()}[where]
    turns = [("human", question), ("gpt", text())]
    for _ in range(rng.randint(0, 2)):
        turns += [("human", text()), ("gpt", text())]
    if any(not v.strip() for _, v in turns):
        return random_conversation(rng)
    return turns, where != "none"


@pytest.mark.parametrize("legacy", [False, True])
def test_encode_example_is_sentencepiece_on_many_conversations(tokenizers, sp, legacy):
    tok = tokenizers[legacy]
    rng = random.Random(17 + legacy)
    for n in range(60):
        turns, has_image = random_conversation(rng)
        placed = [(r, move_image_to_front(v, training=True) if "<image>" in v else v) for r, v in turns]
        prompt = render("vicuna_v1", placed)
        out = encode(turns, tok, has_image=has_image)
        assert out["input_ids"].tolist() == sentencepiece_llava_ids(prompt, sp, legacy), (n, prompt)
        # Labels: exactly each reply and its `</s>`, as the reference's round arithmetic has it.
        assert out["labels"].tolist() == reference_v1_labels(prompt, sp, legacy), (n, prompt)


def reference_v1_labels(prompt: str, sp, legacy: bool) -> list[int]:
    """Reference `preprocess_v1` masking with the sentencepiece ids (4.31: no length correction)."""
    ids = sentencepiece_llava_ids(prompt, sp, legacy)
    target = list(ids)
    sep = " ASSISTANT: "
    cur = 1
    target[:1] = [IGNORE_INDEX]
    for rou in prompt.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        assert len(parts) == 2
        round_len = len(sentencepiece_llava_ids(rou, sp, legacy))
        instruction_len = len(sentencepiece_llava_ids(parts[0] + sep, sp, legacy)) - 2
        target[cur : cur + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur += round_len
    target[cur:] = [IGNORE_INDEX] * (len(target) - cur)
    assert cur == len(ids), "the reference's round arithmetic breaks on this prompt"
    return target


@pytest.mark.parametrize("legacy", [False, True])
def test_plain_captions_are_sentencepiece(tokenizers, sp, legacy):
    tok = tokenizers[legacy]
    for caption in ["A red bus.", " A red bus, leading space.", "  two spaces", "日本語 🐱", "x\ny"]:
        out = encode([("human", "Describe.\n<image>"), ("gpt", caption)], tok, template="plain")
        expected = sentencepiece_llava_ids("<image>" + caption + "\n", sp, legacy)
        assert out["input_ids"].tolist() == expected, caption
        # preprocess_plain: BOS and the image masked, the rest (dummy prefix included) supervised.
        assert out["labels"].tolist() == [IGNORE_INDEX, IGNORE_INDEX] + expected[2:], caption


def test_where_the_fast_tokenizer_differs_the_ids_are_llavas(tokenizers, sp):
    """The three cases of the issue: text starting with a space, a plain caption starting with one,
    text after a literal `</s>` (legacy=false: the first piece loses its '▁')."""
    tok = tokenizers[False]
    prompts = [
        render("vicuna_v1", [("human", "<image>"), ("gpt", "A dog.")]),  # " ASSISTANT: A dog.</s>" after the image
        "<image> A red bus.\n",
        "USER: Q? ASSISTANT: A.</s>USER: Again? ASSISTANT:",
    ]
    for prompt in prompts:
        ours = tokenizer_image_token(prompt, tok, image_token_index=IMG)
        assert ours == sentencepiece_llava_ids(prompt, sp, legacy=False), prompt
        fast = []
        for k, chunk in enumerate(prompt.split("<image>")):
            fast += ([IMG] if k else []) + tok(chunk).input_ids[int(k > 0) :]
        assert fast != ours, f"the fast tokenizer agrees on {prompt!r}: not a case that needs sentencepiece"
    # After `</s>`: ▁USER loses its dummy prefix; "USER" is no piece of this vocabulary -> <unk>.
    after = tokenizer_image_token("A.</s>USER:", tok, image_token_index=IMG)
    assert after[after.index(2) + 1] == sp.unk_id()


def test_offsets_cover_the_text(tokenizers):
    for legacy, tok in tokenizers.items():
        slow = for_tokenizer(tok)
        for text in ["", " ASSISTANT: A dog.", "é\nx</s>日本 🐱", f"a{SPIECE}b</s> c", "<s>x<unk>"]:
            ids, offsets = slow.encode(text)
            assert len(ids) == len(offsets)
            assert all(a[0] <= b[0] for a, b in zip(offsets, offsets[1:])), text
            assert "".join(text[s:e] for s, e in offsets) == text, (legacy, text)


def test_which_tokenizers_take_the_sentencepiece_path(tokenizers, tmp_path):
    from transformers import AutoTokenizer

    tok = tokenizers[False]
    assert for_tokenizer(tok) is not None
    # transformers' own save writes tokenizer.json only: no sentencepiece model, the fast path.
    tok.save_pretrained(tmp_path / "fast")
    assert for_tokenizer(AutoTokenizer.from_pretrained(tmp_path / "fast")) is None
    # llava_jax's save keeps the model and the slow settings (legacy true is not transformers 5's default).
    for legacy, source in tokenizers.items():
        save_tokenizer(source, str(tmp_path / f"kept{legacy}"))
        again = for_tokenizer(AutoTokenizer.from_pretrained(tmp_path / f"kept{legacy}"))
        assert again is not None and again.legacy is legacy
        text = "<s>Q? ASSISTANT: A.</s>USER:  x"
        assert again(text) == for_tokenizer(source)(text)
    # A tokenizer of another family with a sentencepiece file is left alone.
    other = tmp_path / "other"
    rf.write_slow_tokenizer(str(other))
    with open(other / "tokenizer_config.json") as f:
        config = json.load(f)
    config["tokenizer_class"] = "T5Tokenizer"
    with open(other / "tokenizer_config.json", "w") as f:
        json.dump(config, f)
    loaded = AutoTokenizer.from_pretrained(other)
    assert type(loaded).__name__ != "LlamaTokenizer" and for_tokenizer(loaded) is None


def test_labels_of_zero_width_tokens_follow_their_text(tokenizers):
    """The dummy prefix and byte-fallback lead bytes carry no characters: they take the label of what follows."""
    tok = tokenizers[False]
    out = encode([("human", "<image>"), ("gpt", "é 日本")], tok)
    ids, labels = out["input_ids"].tolist(), out["labels"].tolist()
    supervised = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert tok.decode(supervised) == "é 日本</s>"
    # The image-only turn's chunk starts with the lone dummy prefix: part of the prompt, not supervised.
    after_image = ids.index(IMG) + 1
    assert tok.convert_ids_to_tokens(ids[after_image]) == SPIECE and labels[after_image] == IGNORE_INDEX
    assert np.all(np.asarray(labels)[np.asarray(ids) == IMG] == IGNORE_INDEX)
