"""LLaVA-1.5's token ids: the sentencepiece model, as the slow LLaMA tokenizer LLaVA trained with used it.

LLaVA-1.5 was trained and evaluated with transformers 4.31's slow
`LlamaTokenizer` (`use_fast=False`), which runs the checkpoint's
`tokenizer.model` through the `sentencepiece` library. transformers 5 only
has the fast (`tokenizers`) LLaMA tokenizer, and its ids differ where
sentencepiece's dummy prefix matters: text that starts with a space
(`" ASSISTANT:"` after an image-only turn is `['▁', '▁ASS', ...]` in
sentencepiece, without the lone `'▁'` in the fast tokenizer), captions that
start with a space, and text after a literal `</s>`.

`SentencePieceTokens.encode(text)` reproduces the slow tokenizer's
`tokenizer(text).input_ids` with character offsets:

- the text is split at the tokenizer's special and added tokens (`<s>`,
  `</s>`, `<unk>`, `<pad>`, ...), each of which becomes its id;
- every other segment is `sentencepiece.encode(segment)` (dummy prefix
  included), except, when `legacy` is false (LLaVA-1.5's and Vicuna-v1.5's
  `tokenizer_config.json`), for segments that follow a special token and do not
  start with a space: their first piece loses its leading `'▁'` (a piece left
  empty is dropped; one not in the vocabulary becomes `<unk>`), as 4.31's
  `LlamaTokenizer._tokenize` does;
- BOS first (and EOS last) when the tokenizer adds them.

`for_tokenizer(tokenizer)` gives the instance for an HF LLaMA tokenizer loaded
from a directory that ships `tokenizer.model`, and None otherwise (the
tokenizer is then used as it is).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from collections.abc import Mapping

SPIECE_UNDERLINE = "\u2581"
# Tokenizer classes whose slow form is the sentencepiece LLaMA tokenizer.
LLAMA_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")

Offsets = list[tuple[int, int]]


def _char_offsets(text: str, pieces) -> Offsets:
    """sentencepiece byte offsets -> character offsets into `text`."""
    if text.isascii():
        return [(p.begin, p.end) for p in pieces]
    char_at = [0] * (len(text.encode("utf-8")) + 1)
    byte = 0
    for i, ch in enumerate(text):
        n = len(ch.encode("utf-8"))
        for k in range(n):
            char_at[byte + k] = i
        byte += n
        char_at[byte] = i + 1
    return [(char_at[p.begin], char_at[p.end]) for p in pieces]


class SentencePieceTokens:
    """Token ids and character offsets of text, as LLaVA's slow LLaMA tokenizer produced them.

    Args:
      model_file: the sentencepiece `tokenizer.model`.
      legacy: the tokenizer's `legacy` setting (see the module docstring).
      special_tokens: token text -> id for every special/added token (never split).
      bos_id / eos_id: the BOS / EOS ids; add_bos / add_eos: whether each text gets them.
    """

    def __init__(
        self,
        model_file: str,
        *,
        legacy: bool,
        special_tokens: Mapping[str, int],
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool = True,
        add_eos: bool = False,
    ):
        import sentencepiece

        self.model_file = model_file
        self.processor = sentencepiece.SentencePieceProcessor(model_file=model_file)
        self.legacy = bool(legacy)
        self.special_tokens = dict(special_tokens)
        self.bos_id, self.eos_id = bos_id, eos_id
        self.add_bos = bool(add_bos and bos_id is not None)
        self.add_eos = bool(add_eos and eos_id is not None)
        # Longest first, so that a token is never matched by a shorter one it contains.
        alternatives = sorted(self.special_tokens, key=len, reverse=True)
        self._split = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None

    def _segments(self, text: str):
        """(start, text, special id or None) for the pieces of `text` between special tokens."""
        pos = 0
        if self._split is not None:
            for m in self._split.finditer(text):
                if m.start() > pos:
                    yield pos, text[pos : m.start()], None
                yield m.start(), m.group(), self.special_tokens[m.group()]
                pos = m.end()
        if pos < len(text):
            yield pos, text[pos:], None

    def _encode_segment(self, start: int, segment: str) -> tuple[list[int], Offsets]:
        if not self.legacy:
            # 4.31 maps a literal '▁' to a space before encoding (one character for one).
            segment = segment.replace(SPIECE_UNDERLINE, " ")
        pieces = list(self.processor.encode(segment, out_type="proto").pieces)
        offsets = [(start + s, start + e) for s, e in _char_offsets(segment, pieces)]
        ids = [p.id for p in pieces]
        if (
            not self.legacy
            and start > 0
            and not segment.startswith(" ")
            and pieces
            and pieces[0].piece.startswith(SPIECE_UNDERLINE)
        ):
            # After a special token the slow tokenizer strips the dummy prefix from the first
            # piece and looks the rest up as a piece of its own (`<unk>` when there is none).
            rest = pieces[0].piece[1:]
            if rest:
                ids[0] = self.processor.piece_to_id(rest)
            else:
                ids, offsets = ids[1:], offsets[1:]
        return ids, offsets

    def encode(self, text: str) -> tuple[list[int], Offsets]:
        """ids and `[start, end)` character offsets of `text` (BOS/EOS zero-width at the ends).

        Equal to `tokenizer(text).input_ids` of transformers 4.31's slow LlamaTokenizer.
        """
        ids: list[int] = [self.bos_id] if self.add_bos else []
        offsets: Offsets = [(0, 0)] if self.add_bos else []
        for start, segment, special in self._segments(text):
            if special is not None:
                ids.append(special)
                offsets.append((start, start + len(segment)))
                continue
            # Without legacy the slow tokenizer prefixes the whole text with '▁', so only a
            # segment at the very start keeps sentencepiece's dummy prefix on its first piece.
            seg_ids, seg_offsets = self._encode_segment(start, segment)
            ids += seg_ids
            offsets += seg_offsets
        if self.add_eos:
            ids.append(self.eos_id)
            offsets.append((len(text), len(text)))
        return ids, offsets

    def __call__(self, text: str) -> list[int]:
        """ids of `text` (see `encode`)."""
        return self.encode(text)[0]


# What the slow tokenizer reads from tokenizer_config.json, with transformers 4.31's defaults.
SLOW_SETTINGS = {"legacy": True, "add_bos_token": True, "add_eos_token": False, "tokenizer_class": None}


def tokenizer_settings(directory: str) -> dict:
    """`SLOW_SETTINGS` as the directory's tokenizer_config.json sets them (defaults where unset or absent).

    Read from the file: transformers 5 does not keep `legacy`, and its
    `add_bos_token` attribute is not what a tokenizer.json-backed tokenizer does.
    """
    path = os.path.join(directory, "tokenizer_config.json")
    try:
        return dict(_read_settings(path, os.path.getmtime(path)))
    except OSError:
        return dict(SLOW_SETTINGS)


@functools.lru_cache(maxsize=64)
def _read_settings(path: str, mtime: float) -> tuple:
    del mtime  # part of the key only
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError):
        config = {}
    return tuple((k, default if config.get(k) is None else config[k]) for k, default in SLOW_SETTINGS.items())


@functools.lru_cache(maxsize=16)
def _cached(model_file: str, mtime: float, legacy: bool, specials: tuple, bos, eos, add_bos, add_eos):
    del mtime  # part of the key only: a rewritten model file is read again
    return SentencePieceTokens(
        model_file,
        legacy=legacy,
        special_tokens=dict(specials),
        bos_id=bos,
        eos_id=eos,
        add_bos=add_bos,
        add_eos=add_eos,
    )


def model_file(tokenizer) -> str | None:
    """The sentencepiece `tokenizer.model` a LLaMA tokenizer was loaded with, or None.

    A LLaMA tokenizer: its directory's tokenizer_config.json names `LlamaTokenizer`
    (transformers 5 may load such a directory as a generic `TokenizersBackend`,
    e.g. beside a LLaVA `config.json`) or the object is a transformers LLaMA tokenizer.
    """
    path = getattr(tokenizer, "vocab_file", None)
    if not isinstance(path, str) or not path.endswith(".model") or not os.path.isfile(path):
        return None
    declared = tokenizer_settings(os.path.dirname(path))["tokenizer_class"]
    if declared in LLAMA_CLASSES or type(tokenizer).__name__ in LLAMA_CLASSES:
        return path
    return None


def for_tokenizer(tokenizer) -> SentencePieceTokens | None:
    """LLaVA's sentencepiece tokenization for `tokenizer`, or None when it ships no `tokenizer.model`.

    `legacy` and whether BOS/EOS are added come from the tokenizer_config.json
    beside the model file (`tokenizer_settings`); the special tokens and the
    BOS/EOS ids from the tokenizer object.
    """
    path = model_file(tokenizer)
    if path is None:
        return None
    settings = tokenizer_settings(os.path.dirname(path))
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials = tuple(sorted((str(tok), int(i)) for i, tok in decoder.items()))
    return _cached(
        path,
        os.path.getmtime(path),
        bool(settings["legacy"]),
        specials,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        bool(settings["add_bos_token"]),
        bool(settings["add_eos_token"]),
    )


def save_tokenizer(tokenizer, directory: str) -> None:
    """`tokenizer.save_pretrained(directory)`, keeping what LLaVA's tokenization needs.

    For a tokenizer with a sentencepiece model, the model file is copied too and
    the slow tokenizer's settings (`SLOW_SETTINGS`) are written as the source
    directory had them (transformers 5 writes only tokenizer.json and drops or
    rewrites them), so the saved directory tokenizes as the source did.
    """
    tokenizer.save_pretrained(directory)
    path = model_file(tokenizer)
    if path is None:
        return
    shutil.copy(path, os.path.join(directory, "tokenizer.model"))
    config_path = os.path.join(directory, "tokenizer_config.json")
    with open(config_path) as f:
        config = json.load(f)
    settings = tokenizer_settings(os.path.dirname(path))
    if settings["tokenizer_class"] not in LLAMA_CLASSES:
        settings["tokenizer_class"] = "LlamaTokenizer"  # what made this a LLaMA tokenizer: its type
    config.update(settings)
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
