"""`llava-jax convert SRC DST`: HF / original LLaVA checkpoint -> llava_jax checkpoint.

SRC may also be the stage-1 release (its `mm_projector.bin` or directory), with
`--llm VICUNA_DIR --vision-tower CLIP_DIR`.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llava-jax convert`."""
    parser.add_argument(
        "src", help="HF LLaVA directory, original LLaVA checkpoint directory, or a stage-1 mm_projector.bin"
    )
    parser.add_argument("dst", help="output llava_jax checkpoint directory")
    parser.add_argument(
        "--vision-tower",
        default=None,
        help="HF CLIP directory (a local copy of openai/clip-vit-large-patch14-336): the tower's config and, "
        "for checkpoints without vision weights, its weights",
    )
    parser.add_argument(
        "--llm", default=None, help="LLaMA/Vicuna directory, to join with a stage-1 projector (SRC = mm_projector.bin)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def run(args: argparse.Namespace) -> int:
    """Convert and save; prints a one-line summary."""
    from llava_jax.api import convert
    from llava_jax.model.params import abstract_params, count_params

    model = convert(args.src, args.dst, dtype=args.dtype, vision_tower=args.vision_tower, llm=args.llm)
    n = count_params(abstract_params(model.config))
    print(
        f"wrote {args.dst}: {n / 1e9:.3f}B parameters ({args.dtype}), "
        f"tokenizer {'saved' if model.tokenizer is not None else 'absent'}"
    )
    return 0
