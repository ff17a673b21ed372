"""`llava-jax demo [--workdir DIR] [--quick] [--hd]`: the embedded main job (see `llava_jax.demo.run`)."""

from __future__ import annotations

import argparse

DEFAULT_WORKDIR = "workdir_demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llava-jax demo`."""
    parser.add_argument(
        "--workdir",
        default=DEFAULT_WORKDIR,
        help=f"where data, checkpoints and results go (default {DEFAULT_WORKDIR}); "
        "rerunning with the same directory reuses finished steps",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few steps per stage on a few samples (checks the machinery, learns nothing)",
    )
    parser.add_argument(
        "--hd",
        action="store_true",
        help="the LLaVA-1.5-HD variant: 168-px images with small shapes; stage 2 trained twice, on the images "
        "downsampled to the tower's 56 px and on 3x3 tiles + a global view, held-out accuracy side by side "
        f"(default workdir {DEFAULT_WORKDIR}_hd)",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="experiment file with stage0/stage1/stage2 configs (default: the package's llava_jax/demo/config.py)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the fresh chat image (default: a new one each run)"
    )
    parser.add_argument("--eval-batch-size", type=int, default=128, help="held-out questions answered per batch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="JAX CPU devices to split each training batch over (default: one per core, up to 16, a power of 2); "
        "ignored once JAX has started",
    )


def run(args: argparse.Namespace) -> int:
    """Every demo step in order; 0 on success."""
    from llava_jax.demo.run import run as run_demo

    if getattr(args, "hd", False) and args.workdir == DEFAULT_WORKDIR:
        args.workdir = DEFAULT_WORKDIR + "_hd"
    return run_demo(args)
