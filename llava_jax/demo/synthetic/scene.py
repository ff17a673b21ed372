"""Scenes of the synthetic task: what an image holds, how it is sampled and drawn.

Shapes are big and solid, in distinct saturated colours, at distinct slots of a
plus-shaped layout, on a muted background with a slight brightness ramp, so a
small vision tower at 56-112 px (patch 14) can read them. Colours and positions
are drawn without replacement and kinds uniformly, which keeps every answer
distribution uniform (see `evaluation.CHANCE`).
"""

from __future__ import annotations

import dataclasses
import random

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
MAX_SHAPES = 4
_RADIUS = 0.13  # of the image side, at scale 1
_JITTER = 0.02  # of the image side
_COLOR_JITTER = 12  # per channel, so colours are categories, not exact values


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


def sample_rng(seed: int, split: str, index: int) -> random.Random:
    """The random stream of sample `index` of `split` (`stage1`, `stage2`, `eval`, `demo`)."""
    # String seeds are hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random(f"llava_jax.synthetic:{seed}:{split}:{index}")


def _jitter_rgb(rng: random.Random, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-_COLOR_JITTER, _COLOR_JITTER))) for c in rgb)


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
    return sample_scene(sample_rng(seed, "demo", 0))


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "square":
        h = r * 0.85  # same visual area as the circle, roughly
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "triangle":
        return [
            (cx, cy - r),
            (cx + r * 0.95, cy + r * 0.8),
            (cx - r * 0.95, cy + r * 0.8),
        ]
    if kind == "cross":
        a, b = r, r * 0.36
        return [
            (cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b),
            (cx + a, cy + b), (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a),
            (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {kind!r}")


def render_scene(scene: Scene, image_size: int, shape_scale: float = 1.0) -> Image.Image:
    """The scene drawn as an RGB image of `image_size` x `image_size` pixels (no antialiasing: crisp edges).

    `shape_scale` < 1 draws smaller shapes at the same slots: the `--hd` demo's
    detail, e.g. 1/3 at 168 px keeps each shape as many pixels wide as at 56 px
    and scale 1, so it is legible in a 56-px tile and a few-pixel blob in the
    image downsampled to 56 px.
    """
    ramp = np.linspace(-scene.gradient / 2, scene.gradient / 2, image_size)
    base = np.asarray(scene.background_rgb, np.float32)[None, None, :]
    pixels = np.clip(base + ramp[:, None, None], 0, 255).round().astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(pixels, (image_size, image_size, 3)).copy())
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        fx, fy = POSITIONS[s.position]
        cx = (fx + s.offset[0]) * image_size
        cy = (fy + s.offset[1]) * image_size
        r = _RADIUS * s.scale * shape_scale * image_size
        if s.kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=s.rgb)
        else:
            draw.polygon(_polygon(s.kind, cx, cy, r), fill=s.rgb)
    return image
