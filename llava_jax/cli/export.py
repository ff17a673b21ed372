"""`llava-jax export SRC DST`: any loadable model -> HF transformers LLaVA directory."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llava-jax export`."""
    parser.add_argument("src", help="llava_jax checkpoint (or any directory `llava_jax.load` reads)")
    parser.add_argument("dst", help="output HF directory")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="tensor dtype on disk (default: as stored)",
    )
    parser.add_argument("--vision-tower", default=None, help="HF CLIP directory (original checkpoints)")


def run(args: argparse.Namespace) -> int:
    """Load `src` and write the HF directory."""
    from llava_jax.api import load

    model = load(args.src, dtype=args.dtype, vision_tower=args.vision_tower)
    model.export_hf(args.dst, dtype=args.dtype)
    print(f"wrote HF LLaVA directory {args.dst}")
    return 0
