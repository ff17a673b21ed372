"""`llava-jax train --config configs/NAME.py[:arg] --workdir DIR [--config.x=y ...]`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llava-jax train` (config overrides are passed through as `--config.x=y`)."""
    parser.add_argument("--config", required=True, help="experiment file exposing get_config(), e.g. configs/tiny.py")
    parser.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics, final model)")
    parser.epilog = "Any config field can be overridden: --config.optim.lr=2e-5 --config.mesh.fsdp=8"


def run(args: argparse.Namespace) -> int:
    """Load the config, apply overrides, train."""
    from llava_jax.runtime.distributed import initialize

    initialize()
    from llava_jax.train.experiment import load_config
    from llava_jax.train.loop import run as train

    config = load_config(args.config, args.config_overrides)
    summary = train(config, args.workdir)
    import jax

    if jax.process_index() == 0:
        print(f"done: {summary}")
    return 0
