"""Prompt text of the LLaVA-1.5 evaluation, character for character.

Two layers: per-benchmark *question text* builders (what LLaVA's `llava_*.jsonl`
question files hold, or what its `model_vqa_*.py` scripts assemble at run time),
and `render_prompt`, which wraps a user message in the conversation template the
way `llava/conversation.py` does for a single-turn greedy evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llava_jax.data.conversation import IMAGE_TOKEN, generation_prompt

SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
MULTIPLE_CHOICE_CN = "请直接回答选项字母。"
VIZWIZ_UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
MME_YES_NO = "Please answer yes or no."

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# Evaluation renders one user turn; `plain` (stage-1 captioning) has no roles.
TEMPLATES = ("vicuna_v1", "v1", "llava_v1", "llava_hf")


def render_prompt(message: str, template: str = "vicuna_v1") -> str:
    """The generation prompt for one user turn: `SYSTEM USER: {message} ASSISTANT:`.

    Rendered by `llava_jax.data.conversation` exactly as LLaVA's
    `conv.append_message(USER, message); conv.append_message(ASSISTANT, None);
    conv.get_prompt()` does for the string messages of its evaluation scripts:
    `message` is used as given (those scripts already put the image marker and
    a newline in front).
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown evaluation template {template!r}; known: {TEMPLATES}")
    return generation_prompt(template, [("user", message)], image=False)


def with_image(text: str) -> str:
    """The user message for an image question: the image marker, a newline, the text."""
    return f"{IMAGE_TOKEN}\n{text}"


def short_answer(question: str) -> str:
    """VQAv2 / GQA / POPE question text: the question then the short-answer instruction."""
    return f"{question}\n{SHORT_ANSWER}"


def vizwiz(question: str) -> str:
    """VizWiz question text: the unanswerable instruction precedes the short-answer one."""
    return f"{question}\n{VIZWIZ_UNANSWERABLE}\n{SHORT_ANSWER}"


def textvqa(question: str, ocr_tokens: Sequence[str]) -> str:
    """TextVQA question text with the reference OCR tokens (line omitted when there are none)."""
    if not ocr_tokens:
        return short_answer(question)
    return f"{question}\nReference OCR token: {', '.join(ocr_tokens)}\n{SHORT_ANSWER}"


def mme(question: str) -> str:
    """MME question text: MME's own yes/no instruction is replaced by the short-answer one."""
    return short_answer(question.replace(MME_YES_NO, "").strip())


def with_options(question: str, options: Sequence[str]) -> str:
    """`question`, then one `X. option` line per option, lettered from A."""
    lines = [question] + [f"{OPTION_LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
    return "\n".join(lines)


def multiple_choice(question: str, options: Sequence[str]) -> str:
    """SEED-Bench style question text: options then the letter instruction."""
    return f"{with_options(question, options)}\n{MULTIPLE_CHOICE}"


def mmbench(question: str, options: Sequence[str], hint: str | None) -> str:
    """MMBench question text as `model_vqa_mmbench.py --single-pred-prompt` builds it.

    Returns the text *without* the image marker (the reference records that
    form as the answer's `prompt`); the hint, when present, goes on the line
    before the question.
    """
    return with_options(question if hint is None else f"{hint}\n{question}", options)


def mmbench_instruction(lang: str) -> str:
    """The letter instruction MMBench appends after the image-marked text, per language."""
    if lang == "cn":
        return MULTIPLE_CHOICE_CN
    if lang == "en":
        return MULTIPLE_CHOICE
    raise ValueError(f"MMBench lang must be 'en' or 'cn', not {lang!r}")


def scienceqa_cqm(problem: Mapping) -> str:
    """ScienceQA question text in LLaVA's `CQM-A` format (`convert_sqa_to_llava.py`).

    `Context: {hint or N/A}\\nQuestion: {question}\\nOptions: (A) .. (B) ..`, with
    one pass of double-space collapsing and surrounding whitespace stripped.
    """
    context = " ".join([problem.get("hint") or "", ""]).strip() or "N/A"
    choices = " ".join(f"({OPTION_LETTERS[i]}) {c}" for i, c in enumerate(problem["choices"]))
    text = f"Context: {context}\nQuestion: {problem['question']}\nOptions: {choices}\n"
    return text.replace("  ", " ").strip()
