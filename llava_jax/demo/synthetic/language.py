"""The task's closed language: captions, questions with short and long answers, text-only chat.

Referents are always unique (colours and positions are distinct within a scene;
a kind is named only when unique), so every question has one right answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from llava_jax.demo.synthetic.scene import COLORS, SHAPES, Scene, Shape

POSITION_PHRASES = {
    "top": "at the top",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom": "at the bottom",
}

QUESTION_TYPES = ("color", "shape", "count", "position", "existence")
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."

# LLaVA's brief-description instructions (paper, Table 11), as in LCS-558K.
CAPTION_INSTRUCTIONS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
)
DETAIL_INSTRUCTIONS = (
    "Describe the image in detail.",
    "What do you see in this image?",
    "Give a detailed description of the picture.",
)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _number(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _listing(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _phrase(s: Shape) -> str:
    return _a(f"{s.color} {s.kind} {POSITION_PHRASES[s.position]}")


def caption(scene: Scene, rng: random.Random) -> str:
    """A BLIP-style lowercase caption listing every shape (e.g. `a red circle on the left and ...`)."""
    text = _listing([_phrase(s) for s in scene.shapes])
    style = rng.randrange(3)
    if style == 1:
        text += f" on {_a(scene.background)} background"
    elif style == 2:
        text = _number(len(scene.shapes), "shape") + ": " + text
    return text


DESCRIPTION_STYLES = ("slot_order", "shuffled", "place_first", "kind_first")


def describe(scene: Scene, rng: random.Random | None = None, style: str = "slot_order") -> str:
    """The detailed description of a scene (the long answer to `DETAIL_INSTRUCTIONS`).

    `style` (one of `DESCRIPTION_STYLES`):
      slot_order   "a red circle on the left and a blue square at the top", slots in fixed order;
      shuffled     the same phrases in a random order drawn from `rng`: a shape's kind and
                   place follow its colour, so they are read by finding the shape by colour;
      place_first  random order, each place before its shape ("on the left a red circle"):
                   the colour follows the place, read by finding the shape by its place;
      kind_first   random order, each kind before its colour and place ("a circle in red on
                   the left"): colour and place are read by finding the shape by its kind.
    """
    if style not in DESCRIPTION_STYLES:
        raise ValueError(f"unknown description style {style!r}; known: {DESCRIPTION_STYLES}")
    shapes = list(scene.shapes)
    if style != "slot_order":
        if rng is None:
            raise ValueError(f"description style {style!r} needs an rng")
        rng.shuffle(shapes)
    if style == "place_first":
        parts = [f"{POSITION_PHRASES[s.position]} {_a(f'{s.color} {s.kind}')}" for s in shapes]
    elif style == "kind_first":
        parts = [f"{_a(s.kind)} in {s.color} {POSITION_PHRASES[s.position]}" for s in shapes]
    else:
        parts = [_phrase(s) for s in shapes]
    n = len(shapes)
    return f"The image shows {_number(n, 'shape')} on {_a(scene.background)} background: {_listing(parts)}."


def make_question(scene: Scene, qtype: str, rng: random.Random, *, short: bool) -> tuple[str, str]:
    """A `(question, answer)` pair of type `qtype` (one of `QUESTION_TYPES`) about `scene`.

    Short: the question ends with `"\\n" + SHORT_ANSWER_SUFFIX` and the answer is
    one capitalised word (`Red`, `Circle`, `3`, `Left`, `Yes`). Long: no suffix,
    a sentence answer. Referents are always unique: colours and positions are
    distinct within a scene, kinds are used only when unique.
    """
    shapes = scene.shapes
    target = rng.choice(shapes)
    kinds = [s.kind for s in shapes]
    unique_kind = kinds.count(target.kind) == 1
    where = POSITION_PHRASES[target.position]
    if qtype == "color":
        if unique_kind and rng.random() < 0.5:
            subject = f"the {target.kind}"
            q = rng.choice(("What color is {}?", "What is the color of {}?"))
        else:
            subject = f"the shape {where}"
            q = rng.choice(
                (
                    "What color is {}?",
                    "What is the color of {}?",
                    "Which color does {} have?",
                )
            )
        question, short_a = q.format(subject), target.color
        long_a = f"{_cap(subject)} is {target.color}."
    elif qtype == "shape":
        if rng.random() < 0.5:
            subject = f"the {target.color} shape"
            question = rng.choice(
                (
                    f"What shape is the {target.color} object?",
                    f"Which shape is {target.color}?",
                )
            )
        else:
            subject = f"the shape {where}"
            question = rng.choice((f"What shape is {where}?", f"Which shape is {where}?"))
        short_a, long_a = target.kind, f"{_cap(subject)} is a {target.kind}."
    elif qtype == "count":
        question = rng.choice(
            (
                "How many shapes are there?",
                "How many shapes are in the image?",
                "How many objects can you see?",
                "Count the shapes in the picture.",
            )
        )
        n = len(shapes)
        short_a = str(n)
        long_a = f"There {'is' if n == 1 else 'are'} {_number(n, 'shape')} in the image."
    elif qtype == "position":
        if unique_kind and rng.random() < 0.5:
            subject = f"the {target.kind}"
        elif rng.random() < 0.5:
            subject = f"the {target.color} {target.kind}"
        else:
            subject = f"the {target.color} shape"
        question = rng.choice(("Where is {}?", "Where is {} located?")).format(subject)
        short_a, long_a = target.position, f"{_cap(subject)} is {where}."
    elif qtype == "existence":
        yes = rng.random() < 0.5
        by_color = rng.random() < 2 / 3
        absent_kinds = [k for k in SHAPES if k not in kinds]
        if not yes and not by_color and not absent_kinds:
            by_color = True  # every kind is present: ask about an absent colour instead
        if by_color:
            present = [s.color for s in shapes]
            pool = present if yes else [c for c in COLORS if c not in present]
            thing = f"{rng.choice(pool)} shape"
        else:
            thing = rng.choice(kinds if yes else absent_kinds)
        question = rng.choice(
            (
                "Is there {} in the image?",
                "Do you see {}?",
                "Can you find {} in the picture?",
            )
        ).format(_a(thing))
        if yes:
            match = next(s for s in shapes if thing in (f"{s.color} shape", s.kind))
            short_a, long_a = "yes", f"Yes, there is {_phrase(match)}."
        else:
            short_a, long_a = "no", f"No, there is no {thing} in the image."
    else:
        raise ValueError(f"unknown question type {qtype!r}; known: {QUESTION_TYPES}")
    if short:
        return f"{question}\n{SHORT_ANSWER_SUFFIX}", _cap(short_a)
    return question, long_a


_TEXT_FACTS_SIDES = {"triangle": 3, "square": 4, "cross": 12}
_MIXES = (
    ("red", "yellow", "orange"),
    ("blue", "yellow", "green"),
    ("red", "blue", "purple"),
)


def text_only_round(rng: random.Random) -> tuple[str, str]:
    """A question about the task's language that needs no image (LLaVA mixes in ShareGPT text)."""
    kind = rng.randrange(5)
    if kind == 0:
        shape = rng.choice(SHAPES)
        q = f"How many sides does a {shape} have?"
        if shape == "circle":
            return q, "A circle has no straight sides; it is round."
        return q, f"A {shape} has {_TEXT_FACTS_SIDES[shape]} sides."
    if kind == 1:
        if rng.random() < 0.5:
            color = rng.choice(list(COLORS))
            return f"Is {color} a color or a shape?", f"{_cap(color)} is a color."
        shape = rng.choice(SHAPES)
        return f"Is a {shape} a color or a shape?", f"A {shape} is a shape."
    if kind == 2:
        a, b, c = rng.choice(_MIXES)
        if rng.random() < 0.5:
            a, b = b, a
        return (
            f"What color do you get when you mix {a} and {b}?",
            f"Mixing {a} and {b} gives {c}.",
        )
    if kind == 3:
        if rng.random() < 0.5:
            return "Which colors can the shapes have?", (
                "The shapes can be " + _listing(list(COLORS)).replace(" and ", " or ") + "."
            )
        return "Which shapes do you know?", (
            "I know " + _listing([s + ("es" if s.endswith("s") else "s") for s in SHAPES]) + "."
        )
    return rng.choice(("Hello!", "Hi!", "What can you do?")), (
        "Hello! Show me an image and I will tell you about the shapes in it."
    )
