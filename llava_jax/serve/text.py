"""The text of one answer as its tokens arrive: stop checks, stream deltas and the final answer.

The final answer is what `llava_jax.Llava.chat` returns for the same tokens
(stop ids dropped, special tokens skipped, cut at the template's stop string,
surrounding whitespace removed), further cut at the request's own `stop`
sequences (OpenAI semantics: the sequence itself is not returned). Stream
deltas only ever extend what was sent: text that may still change (a
trailing byte-fallback run, incomplete UTF-8, a partial stop sequence,
trailing whitespace) is held back until it settles or the answer ends, so the
deltas concatenate to the final answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class AnswerText:
    """Host-side text of one generated row.

    Args:
      tokenizer: the model's HF tokenizer.
      stop_ids: ids that end a row (EOS); dropped from the text.
      stop_strings: sequences that end the answer (template stop string and the request's `stop`).
    """

    def __init__(self, tokenizer, stop_ids: set[int], stop_strings: Sequence[str]):
        self.tok = tokenizer
        self.stop_ids = stop_ids
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.sent = ""

    def decode(self, tokens: Sequence[int]) -> str:
        """The raw text of int tokens (stop ids dropped, special tokens skipped)."""
        return self.tok.decode([int(t) for t in tokens if int(t) not in self.stop_ids], skip_special_tokens=True)

    def _cut(self, text: str) -> tuple[str, bool]:
        """`text` up to the earliest stop sequence, and whether one was found."""
        hits = [text.index(s) for s in self.stop_strings if s in text]
        return (text[: min(hits)], True) if hits else (text, False)

    def stop_token(self, tokens: Sequence[int], start: int) -> int | None:
        """The number of tokens through the one completing a stop sequence, looking at ends in
        [start, len(tokens)], or None when the text holds no stop sequence."""
        if not self.stop_strings or not self._cut(self.decode(tokens))[1]:
            return None
        for k in range(max(start, 1), len(tokens) + 1):
            if self._cut(self.decode(tokens[:k]))[1]:
                return k
        return len(tokens)

    def final(self, tokens: Sequence[int]) -> str:
        """The whole answer for these tokens (as `Llava.chat` returns it, cut at stop sequences)."""
        return self._cut(self.decode(tokens))[0].strip()

    def _settled(self, tokens: Sequence[int]) -> Sequence[int]:
        # An open run of byte-fallback pieces (`<0xE2>`) decodes to U+FFFD until it is closed.
        end = len(tokens)
        while end and _BYTE_PIECE.fullmatch(str(self.tok.convert_ids_to_tokens(int(tokens[end - 1]))) or ""):
            end -= 1
        return tokens[:end]

    def visible(self, tokens: Sequence[int], final: bool) -> str:
        """The part of the answer that can be shown now (all of it when `final`)."""
        if final:
            return self.final(tokens)
        text, stopped = self._cut(self.decode(tokens))
        if stopped:
            return text.strip()
        text = self.decode(self._settled(tokens)).rstrip("\ufffd")
        for s in self.stop_strings:  # a partial stop sequence at the end may yet complete
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    text = text[:-n]
                    break
        return text.strip()

    def delta(self, tokens: Sequence[int], final: bool = False) -> str:
        """New answer text since the last call (the held-back part comes once it settles)."""
        text = self.visible(tokens, final)
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            # Detokenisation rewrote earlier text (rare): what was sent stays sent.
            return ""
        new, self.sent = text[len(self.sent) :], text
        return new
