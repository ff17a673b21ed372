"""A deterministic synthetic visual-instruction task written in LLaVA's own data formats.

Images hold 1-4 big solid shapes (`SHAPES`) in distinct saturated colours
(`COLORS`) at distinct positions (`POSITIONS`: a plus-shaped layout of five
slots) on a muted background, so that a small vision tower at low resolution
(56-112 px, patch 14) can read them. The text side is a small closed language:

* stage 1 (`blip_laion_cc_sbu_558k.json` layout): a brief-description
  instruction with `<image>` before or after it, and a BLIP-style caption;
* stage 2 (`llava_v1_5_mix665k.json` layout): 1-3 question rounds about colour,
  shape, count, position and existence, short answers (with LLaVA's
  `SHORT_ANSWER_SUFFIX`) or sentence answers, a detailed description, and
  text-only conversations (no `"image"` key);
* a held-out evaluation file in LLaVA's question-file layout (`question_id`,
  `image`, `text` per line, plus `category` and `answer`), one short question
  per image, types balanced, scored by exact match (`score_synthetic`).

Every sample is drawn from its own `random.Random` seeded by `(seed, split,
index)`, so a sample does not depend on how many others are generated, the
splits never share a stream, and the same seed gives byte-identical files.
Answer distributions are uniform by construction (colours and positions drawn
without replacement, kinds and counts uniform, existence answered yes half of
the time), which makes each type's chance level exact (`CHANCE`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# Saturated, well separated in RGB, none close to a background tone.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (245, 215, 30),
    "purple": (150, 60, 190),
    "orange": (245, 135, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 25),
    "dark gray": (80, 80, 80),
    "gray": (150, 150, 150),
    "light gray": (205, 205, 205),
    "white": (245, 245, 245),
    "beige": (225, 210, 175),
}
SHAPES = ("circle", "square", "triangle", "cross")
# Slot centres as fractions of the image side; with the radius below, shapes in
# neighbouring slots never touch and never leave the image.
POSITIONS: dict[str, tuple[float, float]] = {
    "top": (0.5, 0.19),
    "left": (0.19, 0.5),
    "center": (0.5, 0.5),
    "right": (0.81, 0.5),
    "bottom": (0.5, 0.81),
}
POSITION_PHRASES = {
    "top": "at the top",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom": "at the bottom",
}
MAX_SHAPES = 4
_RADIUS = 0.13  # of the image side, at scale 1
_JITTER = 0.02  # of the image side
_COLOR_JITTER = 12  # per channel, so colours are categories, not exact values

QUESTION_TYPES = ("color", "shape", "count", "position", "existence")
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
# Best constant guess per type, exact for the generator's answer distribution.
CHANCE: dict[str, float] = {
    "color": 1.0 / len(COLORS),
    "shape": 1.0 / len(SHAPES),
    "count": 1.0 / MAX_SHAPES,
    "position": 1.0 / len(POSITIONS),
    "existence": 0.5,
}

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


@dataclasses.dataclass(frozen=True)
class Shape:
    """One drawn shape: its kind, colour name and slot, plus the jitter that makes each drawing unique."""

    kind: str
    color: str
    position: str
    rgb: tuple[int, int, int]
    offset: tuple[float, float]  # slot-centre shift, fraction of the side
    scale: float


@dataclasses.dataclass(frozen=True)
class Scene:
    """An image's content: shapes in `POSITIONS` order and the background."""

    shapes: tuple[Shape, ...]
    background: str
    background_rgb: tuple[int, int, int]
    gradient: int  # top-to-bottom brightness change of the background, in levels


def _rng(seed: int, split: str, index: int) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random(f"llava_jax.synthetic:{seed}:{split}:{index}")


def _jitter_rgb(rng: random.Random, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(
        min(255, max(0, c + rng.randint(-_COLOR_JITTER, _COLOR_JITTER))) for c in rgb
    )


def sample_scene(rng: random.Random) -> Scene:
    """A random scene: 1-`MAX_SHAPES` shapes, distinct colours and positions, uniform kinds."""
    n = rng.randint(1, MAX_SHAPES)
    positions = rng.sample(list(POSITIONS), n)
    colors = rng.sample(list(COLORS), n)
    shapes = []
    for position, color in zip(positions, colors):
        shapes.append(
            Shape(
                kind=rng.choice(SHAPES),
                color=color,
                position=position,
                rgb=_jitter_rgb(rng, COLORS[color]),
                offset=(
                    rng.uniform(-_JITTER, _JITTER),
                    rng.uniform(-_JITTER, _JITTER),
                ),
                scale=rng.uniform(0.85, 1.0),
            )
        )
    order = list(POSITIONS)
    shapes.sort(key=lambda s: order.index(s.position))
    background = rng.choice(list(BACKGROUNDS))
    return Scene(
        shapes=tuple(shapes),
        background=background,
        background_rgb=_jitter_rgb(rng, BACKGROUNDS[background]),
        gradient=rng.randint(-20, 20),
    )


def random_scene(seed: int) -> Scene:
    """A scene from its own stream (`split="demo"`), e.g. a fresh image to chat about."""
    return sample_scene(_rng(seed, "demo", 0))


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "square":
        h = r * 0.85  # same visual area as the circle, roughly
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if kind == "cross":
        a, b = r, r * 0.36
        return [
            (cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b),
            (cx + a, cy + b), (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a),
            (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {kind!r}")


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """The scene drawn as an RGB image of `image_size` x `image_size` pixels (no antialiasing: crisp edges)."""
    ramp = np.linspace(-scene.gradient / 2, scene.gradient / 2, image_size)
    base = np.asarray(scene.background_rgb, np.float32)[None, None, :]
    pixels = np.clip(base + ramp[:, None, None], 0, 255).round().astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(pixels, (image_size, image_size, 3)).copy())
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        fx, fy = POSITIONS[s.position]
        cx = (fx + s.offset[0]) * image_size
        cy = (fy + s.offset[1]) * image_size
        r = _RADIUS * s.scale * image_size
        if s.kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=s.rgb)
        else:
            draw.polygon(_polygon(s.kind, cx, cy, r), fill=s.rgb)
    return image


# ---------------------------------------------------------------- text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _number(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _listing(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _phrase(s: Shape) -> str:
    return f"a {s.color} {s.kind} {POSITION_PHRASES[s.position]}"


def caption(scene: Scene, rng: random.Random) -> str:
    """A BLIP-style lowercase caption listing every shape (e.g. `a red circle on the left and ...`)."""
    text = _listing([_phrase(s) for s in scene.shapes])
    style = rng.randrange(3)
    if style == 1:
        text += f" on a {scene.background} background"
    elif style == 2:
        text = _number(len(scene.shapes), "shape") + ": " + text
    return text


def describe(scene: Scene) -> str:
    """The detailed description of a scene (the long answer to `DETAIL_INSTRUCTIONS`)."""
    n = len(scene.shapes)
    verb = "is" if n == 1 else "are"
    return (
        f"The image shows {_number(n, 'shape')} on a {scene.background} background. "
        f"There {verb} {_listing([_phrase(s) for s in scene.shapes])}."
    )


def make_question(
    scene: Scene, qtype: str, rng: random.Random, *, short: bool
) -> tuple[str, str]:
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
                ("What color is {}?", "What is the color of {}?", "Which color does {} have?")
            )
        question, short_a = q.format(subject), target.color
        long_a = f"{_cap(subject)} is {target.color}."
    elif qtype == "shape":
        if rng.random() < 0.5:
            subject = f"the {target.color} shape"
            question = rng.choice(
                ("What shape is the {} object?", "Which kind of shape is {}?")
            ).format(target.color if "{} object" else "")
            question = rng.choice(
                (f"What shape is the {target.color} object?", f"Which kind of shape is {target.color}?")
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
            ("Is there a {} in the image?", "Do you see a {}?", "Can you find a {} in the picture?")
        ).format(thing)
        if yes:
            match = next(
                s for s in shapes if thing in (f"{s.color} shape", s.kind)
            )
            short_a, long_a = "yes", f"Yes, there is {_phrase(match)}."
        else:
            short_a, long_a = "no", f"No, there is no {thing} in the image."
    else:
        raise ValueError(f"unknown question type {qtype!r}; known: {QUESTION_TYPES}")
    if short:
        return f"{question}\n{SHORT_ANSWER_SUFFIX}", _cap(short_a)
    return question, long_a
