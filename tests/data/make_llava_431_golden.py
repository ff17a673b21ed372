"""Writes `llava_431_golden.json`: LLaVA's own ids and labels, made with transformers 4.31.0's slow tokenizer.

Not part of the suite (it needs transformers==4.31.0, the version LLaVA-1.5 pins
and trained with). Regenerate with that version first on the path, e.g.

    pip download transformers==4.31.0 --no-deps -d /tmp/tf431
    unzip -q /tmp/tf431/transformers-4.31.0-py3-none-any.whl -d /tmp/tf431/site
    # 4.31 refuses newer `tokenizers` at import; the slow tokenizer does not use them:
    echo 'def dep_version_check(pkg, hint=None): pass' > /tmp/tf431/site/transformers/dependency_versions_check.py
    PYTHONPATH=/tmp/tf431/site:. python tests/data/make_llava_431_golden.py

Everything LLaVA-specific is restated from the reference repo (llava/conversation.py
`get_prompt`, llava/mm_utils.py `tokenizer_image_token`, llava/train/train.py
`preprocess_multimodal`, `preprocess_v1`, `preprocess_plain`); nothing comes from
llava_jax, so the file is an independent reference. The tokenizer is
`tests/assets/tokenizer.model` in the release's tokenizer files
(`tests.released_fixtures.write_slow_tokenizer`), once with `legacy: false` (as
released) and once with `legacy: true`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import tempfile

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "llava_431_golden.json")

# (name, template, has_image, turns): image first / last / only, multi-turn, unicode, spaces, plain.
CASES = [
    ("image_first", "vicuna_v1", True, [("human", "<image>\nWhat is this?"), ("gpt", "A cat on a mat.")]),
    ("image_last", "vicuna_v1", True, [("human", "What color is the bus?\n<image>"), ("gpt", "Red.")]),
    ("image_only", "vicuna_v1", True, [("human", "<image>"), ("gpt", "A dog.")]),
    (
        "multi_turn",
        "vicuna_v1",
        True,
        [
            ("human", "<image>\nHow many people?"),
            ("gpt", "Two people."),
            ("human", "Where are they?"),
            ("gpt", "On the street."),
            ("human", "Anything else?"),
            ("gpt", "A dog, left of the car."),
        ],
    ),
    ("unicode", "vicuna_v1", True, [("human", "<image>\nÜnïcödé? 日本語のテスト"), ("gpt", "café naïve 🐱 日本")]),
    (
        "spaces",
        "vicuna_v1",
        True,
        [
            ("human", "  <image>\nCount them.  "),
            ("gpt", "  42"),
            ("human", " Again?"),
            ("gpt", "3 cats and 1 dog "),
            ("human", "Newline?"),
            ("gpt", "\nyes "),
        ],
    ),
    ("text_only", "vicuna_v1", False, [("human", "Hi there?"), ("gpt", "Hello."), ("human", "Bye?"), ("gpt", "Bye.")]),
    ("eos_in_question", "vicuna_v1", True, [("human", "<image>\nWhat does </s>x mean?"), ("gpt", "An end.")]),
    ("plain", "plain", True, [("human", "<image>\nDescribe."), ("gpt", "A red bus on the street.")]),
    ("plain_leading_space", "plain", True, [("human", "Describe.\n<image>"), ("gpt", " A red bus, 2 people.")]),
]
# Generation prompts as chat/evaluation render them (reference `get_prompt` with an empty last message).
GENERATION = [
    ("ask_image", [("USER", "<image>\nWhat is this?"), ("ASSISTANT", None)]),
    ("ask_image_only", [("USER", "<image>\n"), ("ASSISTANT", None)]),
    (
        "ask_second_turn",
        [("USER", "<image>\nWhat is this?"), ("ASSISTANT", "A cat."), ("USER", "Color? "), ("ASSISTANT", None)],
    ),
    ("ask_text", [("USER", "  Hello  there "), ("ASSISTANT", None)]),
]


def get_prompt(messages) -> str:
    """Reference `Conversation.get_prompt` for vicuna_v1 (SeparatorStyle.TWO)."""
    seps = [" ", "</s>"]
    ret = SYSTEM + seps[0]
    for i, (role, message) in enumerate(messages):
        ret += role + ": " + message + seps[i % 2] if message else role + ":"
    return ret


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX):
    """Reference `llava/mm_utils.py`."""
    prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]

    def insert_separator(x, sep):
        return [ele for sublist in zip(x, [sep] * len(x)) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


def preprocess_multimodal(turns):
    """Reference `preprocess_multimodal` (LLaVA-1.5: `<image>` to the front, no im_start/end)."""
    out = []
    for role, value in turns:
        if "<image>" in value:
            value = value.replace("<image>", "").strip()
            value = ("<image>" + "\n" + value).strip()
        out.append((role, value))
    return out


def preprocess_v1(turns, tokenizer, has_image):
    """Reference `preprocess_v1` (transformers 4.31, tokenizers < 0.14: no length correction).

    The reference counts tokens that are not the pad token (`<unk>`); this counts
    all of them, which differs only when `<unk>` occurs in the text.
    """
    roles = {"human": "USER", "gpt": "ASSISTANT"}
    prompt = get_prompt([(roles[r], v) for r, v in turns])
    if has_image:
        input_ids = tokenizer_image_token(prompt, tokenizer)
    else:
        input_ids = tokenizer(prompt).input_ids
    target = list(input_ids)
    sep = " " + "ASSISTANT" + ": "
    total_len = len(target)
    rounds = prompt.split("</s>")
    cur_len = 1
    target[:cur_len] = [IGNORE_INDEX]
    for rou in rounds:
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        if has_image:
            round_len = len(tokenizer_image_token(rou, tokenizer))
            instruction_len = len(tokenizer_image_token(parts[0], tokenizer)) - 2
        else:
            round_len = len(tokenizer(rou).input_ids)
            instruction_len = len(tokenizer(parts[0]).input_ids) - 2
        target[cur_len : cur_len + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur_len += round_len
    target[cur_len:] = [IGNORE_INDEX] * (len(target) - cur_len)
    return prompt, input_ids, (target if cur_len == total_len else None)


def preprocess_plain(turns, tokenizer):
    """Reference `preprocess_plain`."""
    source = copy.deepcopy(turns)
    assert "<image>" in source[0][1]
    source[0] = (source[0][0], "<image>")
    prompt = source[0][1] + source[1][1] + "\n"
    input_ids = tokenizer_image_token(prompt, tokenizer)
    target = list(input_ids)
    tokenized_len = len(tokenizer_image_token(source[0][1], tokenizer))
    target[:tokenized_len] = [IGNORE_INDEX] * tokenized_len
    return prompt, input_ids, target


def main() -> None:
    import transformers
    from transformers import AutoTokenizer

    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    from tests.released_fixtures import TOKENIZER_MODEL, write_slow_tokenizer

    assert transformers.__version__ == "4.31.0", transformers.__version__
    with open(TOKENIZER_MODEL, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    golden = {"transformers": transformers.__version__, "tokenizer_sha256": digest, "cases": [], "generation": []}
    for legacy in (False, True):
        directory = write_slow_tokenizer(tempfile.mkdtemp(), legacy=legacy)
        tokenizer = AutoTokenizer.from_pretrained(directory, use_fast=False)
        assert type(tokenizer).__name__ == "LlamaTokenizer" and tokenizer.legacy is legacy
        for name, template, has_image, turns in CASES:
            placed = preprocess_multimodal(turns) if has_image else turns
            if template == "plain":
                prompt, ids, labels = preprocess_plain(placed, tokenizer)
            else:
                prompt, ids, labels = preprocess_v1(placed, tokenizer, has_image)
            golden["cases"].append(
                dict(
                    name=name,
                    legacy=legacy,
                    template=template,
                    has_image=has_image,
                    turns=turns,
                    prompt=prompt,
                    input_ids=ids,
                    labels=labels,
                )
            )
        for name, messages in GENERATION:
            prompt = get_prompt(messages)
            golden["generation"].append(
                dict(name=name, legacy=legacy, prompt=prompt, input_ids=tokenizer_image_token(prompt, tokenizer))
            )
    with open(OUT, "w", encoding="utf-8") as f:  # one record per line
        head = {k: v for k, v in golden.items() if not isinstance(v, list)}
        f.write(json.dumps(head, ensure_ascii=False)[:-1])
        for key in ("cases", "generation"):
            rows = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in golden[key])
            f.write(f',\n "{key}": [\n  {rows}\n ]')
        f.write("\n}\n")
    print(f"wrote {OUT}: {len(golden['cases'])} conversations, {len(golden['generation'])} generation prompts")


if __name__ == "__main__":
    main()
