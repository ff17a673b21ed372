"""The synthetic task's tokenizer: a tiny LLaMA-style SentencePiece model, shipped and rebuildable.

Like Vicuna's: BPE with byte fallback, `<unk>`=0, `<s>`=1, `</s>`=2, BOS added,
no EOS added, identity normalisation, a dummy prefix space, digits split (so
`"\\n"` is the byte token `<0x0A>`, as in LLaMA). As in llava-hf, `<image>` is
an added special token after the SentencePiece vocabulary (id `VOCAB_SIZE`),
then `<pad>` (id `VOCAB_SIZE + 1`); `</s>` is EOS. The model is trained on text
drawn from the generator itself (fixed seed) plus every template and
conversation-template string, so the task's whole language tokenizes without
`<unk>` and without byte fallback except for newlines.

The shipped asset (`llava_jax/demo/assets/synthetic_tokenizer/`: `tokenizer.model`,
`tokenizer_config.json`, `special_tokens_map.json`) is what
`build_synthetic_tokenizer` writes; rebuild it with
`python -m llava_jax.demo.synthetic build-tokenizer [OUT_DIR]`.
"""

from __future__ import annotations

import io
import json
import os

from llava_jax.data.conversation import TEMPLATES, generation_prompt, render
from llava_jax.demo.synthetic.dataset import caption_sample, eval_item, instruct_sample
from llava_jax.demo.synthetic.language import (
    CAPTION_INSTRUCTIONS,
    DETAIL_INSTRUCTIONS,
    POSITION_PHRASES,
    SHORT_ANSWER_SUFFIX,
)
from llava_jax.demo.synthetic.scene import BACKGROUNDS, COLORS, SHAPES

VOCAB_SIZE = 768
IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
ASSET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "synthetic_tokenizer")
# The corpus is a fixed function of the generator: changing either changes the
# tokenizer, which the tests catch by comparing a rebuild with the asset.
_CORPUS_SEED = 12345
_CORPUS_SAMPLES = 1500
# The stage-2 mix the shipped tokenizer was trained on, pinned so that changing the
# training mix (`dataset.DETAIL_FRACTION`, description styles, question weights,
# rounds per sample) does not change the token ids.
_CORPUS_DETAIL_FRACTION = 0.15

_TRAINER_ARGS = {
    "model_type": "bpe",
    "vocab_size": VOCAB_SIZE,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "identity",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "allow_whitespace_only_pieces": True,
    "character_coverage": 1.0,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    # One thread and no sampling or shuffling: the same corpus gives the same model.
    "num_threads": 1,
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    "minloglevel": 2,
}


def tokenizer_corpus() -> list[str]:
    """The training text: one line per string, no `\\n` and no special-token text in it.

    Vocabulary and instruction lists (every word at least once), both chat
    templates' system prompts, then `_CORPUS_SAMPLES` samples of each split
    rendered as the model sees them (`plain` for stage 1, `vicuna_v1` for stage 2,
    its mix pinned at `_CORPUS_DETAIL_FRACTION`, and evaluation), so that merges
    follow real frequencies: the system prompt
    and role tags, present in every stage-2 sample, become a few tokens.
    """
    lines = [*CAPTION_INSTRUCTIONS, *DETAIL_INSTRUCTIONS, SHORT_ANSWER_SUFFIX]
    lines += [*COLORS, *SHAPES, *BACKGROUNDS, *POSITION_PHRASES.values()]
    lines += [t.system for t in TEMPLATES.values() if t.system]
    for i in range(_CORPUS_SAMPLES):
        record = caption_sample(i, seed=_CORPUS_SEED)[0]
        turns = [(t["from"], t["value"]) for t in record["conversations"]]
        lines.append(render("plain", turns, image=True))
        record, _ = instruct_sample(
            i,
            seed=_CORPUS_SEED,
            text_only=i % 10 == 0,
            detail_fraction=_CORPUS_DETAIL_FRACTION,
            description_styles=None,
            question_weights=None,
            max_rounds=3,
        )
        turns = [(t["from"], t["value"]) for t in record["conversations"]]
        lines.append(render("vicuna_v1", turns, image="image" in record))
        item = eval_item(i, seed=_CORPUS_SEED)[0]
        lines.append(generation_prompt("vicuna_v1", item["text"]) + " " + item["answer"])
    out = []
    for line in lines:
        for special in (IMAGE_TOKEN, *SPECIAL_TOKENS):
            line = line.replace(special, "\n")
        out += [piece for piece in line.split("\n") if piece.strip()]
    return out


def _added_token(content: str) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def _configs() -> tuple[dict, dict]:
    """`tokenizer_config.json` and `special_tokens_map.json`, in the layout of llava-hf's."""
    added = {str(i): _added_token(t) for i, t in enumerate(SPECIAL_TOKENS)}
    added[str(VOCAB_SIZE)] = _added_token(IMAGE_TOKEN)
    added[str(VOCAB_SIZE + 1)] = _added_token(PAD_TOKEN)
    special = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": PAD_TOKEN,
    }
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        **special,
        "extra_special_tokens": {"image_token": IMAGE_TOKEN},
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 2048,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    }
    return config, special


def train_sentencepiece() -> bytes:
    """The serialized SentencePiece model (`tokenizer.model` bytes), trained deterministically."""
    import sentencepiece as spm

    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(tokenizer_corpus()), model_writer=writer, **_TRAINER_ARGS)
    return writer.getvalue()


def build_synthetic_tokenizer(out_dir: str | os.PathLike = ASSET_DIR) -> str:
    """Writes `tokenizer.model`, `tokenizer_config.json`, `special_tokens_map.json` to `out_dir`; returns it."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    config, special = _configs()
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(train_sentencepiece())
    for name, obj in (
        ("tokenizer_config.json", config),
        ("special_tokens_map.json", special),
    ):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    return out_dir


def synthetic_tokenizer_path() -> str:
    """The directory of the shipped tokenizer (for `AutoTokenizer.from_pretrained`, or a config's `tokenizer` field)."""
    return ASSET_DIR


def synthetic_tokenizer():
    """The shipped tokenizer, loaded with `transformers.AutoTokenizer` (a fast `LlamaTokenizer`).

    `len(tokenizer) == VOCAB_SIZE + 2`: ids `< VOCAB_SIZE` are SentencePiece
    pieces, `VOCAB_SIZE` is `<image>` (`tokenizer.image_token_id`), `VOCAB_SIZE
    + 1` is `<pad>`.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ASSET_DIR)
