"""`llava-jax convert SRC DST`: HF / original LLaVA checkpoint -> llava_jax checkpoint."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llava-jax convert`."""
    parser.add_argument("src", help="HF LLaVA directory or original LLaVA checkpoint directory")
    parser.add_argument("dst", help="output llava_jax checkpoint directory")
    parser.add_argument(
        "--vision-tower", default=None, help="HF CLIP directory, for original checkpoints without vision weights"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def run(args: argparse.Namespace) -> int:
    """Convert and save; prints a one-line summary."""
    from llava_jax.api import convert
    from llava_jax.model.params import abstract_params, count_params

    model = convert(args.src, args.dst, dtype=args.dtype, vision_tower=args.vision_tower)
    n = count_params(abstract_params(model.config))
    print(
        f"wrote {args.dst}: {n / 1e9:.3f}B parameters ({args.dtype}), "
        f"tokenizer {'saved' if model.tokenizer is not None else 'absent'}"
    )
    return 0
