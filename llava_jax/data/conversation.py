"""LLaVA conversation templates, rendered byte-identically to the reference `conversation.py`.

Templates: `vicuna_v1` (alias `v1`; stage 2 and evaluation), `llava_v1` (same
with "curious human"), `plain` (stage 1: image then caption), and `llava_hf`
(the chat template shipped with llava-hf checkpoints).

A conversation is a sequence of `(role, message)` turns; roles may be the
template's own (`USER`/`ASSISTANT`) or the data's (`human`/`gpt`, also
`user`/`assistant`); a turn's position decides its speaker slot, as in the
reference. An empty or `None` message renders as `ROLE:` (the generation
prompt).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

IMAGE_TOKEN = "<image>"

Turn = tuple[str, "str | None"]


@dataclasses.dataclass(frozen=True)
class Template:
    """One conversation format.

    `style` is `two` (reference `SeparatorStyle.TWO`: `ROLE: message` followed by
    `sep` after user turns and `sep2` after assistant turns) or `plain`
    (reference `SeparatorStyle.PLAIN`: messages only). `stop_str` is what ends a
    generated reply.
    """

    name: str
    system: str
    roles: tuple[str, str]
    style: str
    sep: str
    sep2: str
    stop_str: str | None

    def role_index(self, role: str) -> int:
        """0 for the user side, 1 for the assistant side; `ValueError` otherwise."""
        key = role.lower()
        if key in ("human", "user") or (self.roles[0] and role == self.roles[0]):
            return 0
        if key in ("gpt", "assistant") or (self.roles[1] and role == self.roles[1]):
            return 1
        raise ValueError(f"unknown role {role!r} for template {self.name!r}")


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

VICUNA_V1 = Template("vicuna_v1", _VICUNA_SYSTEM, ("USER", "ASSISTANT"), "two", " ", "</s>", "</s>")
LLAVA_V1 = Template("llava_v1", _LLAVA_V1_SYSTEM, ("USER", "ASSISTANT"), "two", " ", "</s>", "</s>")
# The reference's `sep2` is None, which makes `get_prompt` raise on a filled
# second message; `"\n"` keeps rendering defined there and changes nothing else.
PLAIN = Template("plain", "", ("", ""), "plain", "\n", "\n", "\n")
# llava-hf chat template: `USER: <image>\n{text} ASSISTANT: {reply} USER: ...`,
# no system prompt, a space after every message, no `</s>` in the text.
LLAVA_HF = Template("llava_hf", "", ("USER", "ASSISTANT"), "two", " ", " ", None)

TEMPLATES = {
    "vicuna_v1": VICUNA_V1,
    "v1": VICUNA_V1,
    "llava_v1": LLAVA_V1,
    "plain": PLAIN,
    "llava_hf": LLAVA_HF,
}


def get_template(template: str | Template) -> Template:
    """A `Template` from its name (or the template itself)."""
    if isinstance(template, Template):
        return template
    try:
        return TEMPLATES[template]
    except KeyError:
        raise ValueError(f"unknown template {template!r}; known: {sorted(TEMPLATES)}") from None


def move_image_to_front(text: str, *, training: bool = False) -> str:
    """`<image>` moved to the front of `text`, followed by a newline, as the reference does.

    At inference (`get_prompt`) the result is `"<image>\\n" + rest.strip()`; in
    training (`preprocess_multimodal`) the whole result is stripped again, so an
    image-only message becomes `"<image>"`. Every `<image>` marker in `text` is
    replaced by the single leading one.
    """
    moved = IMAGE_TOKEN + "\n" + text.replace(IMAGE_TOKEN, "").strip()
    return moved.strip() if training else moved


def _messages(template: Template, turns: Sequence[Turn]) -> list[tuple[str, str | None]]:
    """Turns -> (template role string, message), checking that speakers alternate from the user."""
    out = []
    for i, (role, message) in enumerate(turns):
        index = template.role_index(role)
        if index != i % 2:
            raise ValueError(f"turn {i} is from {role!r}: turns must alternate user/assistant, starting with the user")
        out.append((template.roles[index], message))
    return out


def render(template: str | Template, turns: Sequence[Turn], *, image: bool = False) -> str:
    """The prompt string of reference `Conversation.get_prompt()` for these turns.

    Args:
      template: a template name or `Template`.
      turns: `(role, message)` pairs alternating user/assistant; a `None` or
        empty message renders as `ROLE:` (for `plain`, as nothing).
      image: an image is attached to the first turn (the reference's tuple
        message): `<image>` is moved (or added) to the front of that turn.
    Returns:
      The rendered prompt.
    """
    template = get_template(template)
    messages = _messages(template, turns)
    if image and messages:
        role, first = messages[0]
        messages[0] = (role, move_image_to_front(first or ""))
    if template.style == "two":
        seps = (template.sep, template.sep2)
        # A system-less template (llava_hf) starts directly with the first role.
        out = template.system + template.sep if template.system else ""
        for i, (role, message) in enumerate(messages):
            out += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
        return out
    if template.style == "plain":
        seps = (template.sep, template.sep2)
        out = template.system
        for i, (_, message) in enumerate(messages):
            if message:
                out += message + seps[i % 2]
        return out
    raise ValueError(f"unknown template style {template.style!r}")


def generation_prompt(template: str | Template, turns: str | Sequence[Turn], *, image: bool = True) -> str:
    """The prompt that asks for the next assistant reply (ends with `ASSISTANT:` for chat templates).

    Args:
      template: a template name or `Template`.
      turns: a single user question, or turns ending with a user turn.
      image: whether an image is attached to the first user turn.
    """
    template = get_template(template)
    if isinstance(turns, str):
        turns = [("user", turns)]
    turns = list(turns)
    if not turns or template.role_index(turns[-1][0]) != 0:
        raise ValueError("the last turn of a generation prompt must be the user's")
    return render(template, turns + [("assistant", None)], image=image)


def training_segments(template: str | Template, turns: Sequence[Turn]) -> list[tuple[str, bool]]:
    """The training text of a conversation as `(text, supervised)` pieces, concatenating to it.

    `vicuna_v1`/`llava_v1`/`llava_hf`: the text is `render(turns)`; each assistant
    reply, the space before it and its closing separator (`</s>`; not a
    whitespace separator, which belongs to the next token) are supervised,
    everything else (system prompt, user turns, `ROLE:` tags) is not. The space
    belongs to the reply because SentencePiece attaches it to the reply's first
    token (`▁A`). `<image>` markers must already be placed (see
    `move_image_to_front`). `plain`: reference `preprocess_plain`, i.e. `<image>`
    then the caption and `"\\n"`, the caption and newline supervised.
    """
    template = get_template(template)
    messages = _messages(template, turns)
    if template.style == "plain":
        if len(messages) != 2:
            raise ValueError(f"plain template needs one user and one assistant turn, got {len(messages)}")
        return [(IMAGE_TOKEN, False), (messages[1][1] + template.sep, True)]
    if template.style != "two":
        raise ValueError(f"unknown template style {template.style!r}")
    segments: list[tuple[str, bool]] = []
    pending = template.system + template.sep if template.system else ""
    for i, (role, message) in enumerate(messages):
        if not message:
            raise ValueError(f"turn {i} is empty")
        if i % 2 == 0:
            pending += f"{role}: {message}{template.sep}"
        else:
            segments.append((pending + f"{role}:", False))
            if template.sep2.strip():
                segments.append((f" {message}{template.sep2}", True))
                pending = ""
            else:
                # A whitespace separator (llava_hf) joins the next word's token
                # (`▁USER`), so it cannot be supervised with the reply.
                segments.append((f" {message}", True))
                pending = template.sep2
    if pending:
        segments.append((pending, False))
    return segments
