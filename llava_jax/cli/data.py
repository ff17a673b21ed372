"""`llava-jax data ...`: data tools.

llava-jax data pack JSON IMAGE_ROOT OUT_DIR      LLaVA JSON + images -> ArrayRecord shards
llava-jax data synthetic OUT_DIR [--num-...]    the demo's synthetic shapes dataset (LLaVA formats)
"""

from __future__ import annotations

import argparse
import logging

from llava_jax.data.paths import DEFAULT_MAX_IMAGE_BYTES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Registers `data` subcommands on the `llava-jax data` parser."""
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = sub.add_parser(
        "pack",
        help="LLaVA JSON + images -> ArrayRecord shards",
        description=pack_doc(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("json", help="LLaVA JSON or JSONL file")
    p.add_argument("image_root", help="folder the examples' image paths are relative to")
    p.add_argument("out_dir", help="output folder for the shards")
    p.add_argument("--shard-size", type=int, default=5000, help="examples per shard")
    p.add_argument(
        "--on-error",
        choices=("skip", "strict"),
        default="skip",
        help="skip (log and count) or stop at the first unreadable example",
    )
    p.add_argument("--workers", type=int, default=8, help="threads reading image files")
    p.add_argument("--overwrite", action="store_true", help="replace the pack already in OUT_DIR (refused without it)")
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read image paths that lead outside IMAGE_ROOT (absolute, '..', symbolic links); refused by default",
    )
    p.add_argument(
        "--max-image-mb",
        type=float,
        default=DEFAULT_MAX_IMAGE_BYTES / 2**20,
        help="skip image files larger than this many MiB (default %(default)g)",
    )
    s = sub.add_parser(
        "synthetic",
        help="write the synthetic shapes dataset (stage-1 captions, stage-2 conversations, held-out questions)",
    )
    s.add_argument("out_dir", help="output folder (JSON files + images/)")
    s.add_argument("--num-captions", type=int, default=2000)
    s.add_argument("--num-qa", type=int, default=4000)
    s.add_argument("--num-eval", type=int, default=500)
    s.add_argument("--image-size", type=int, default=56)
    s.add_argument("--seed", type=int, default=0)


def pack_doc() -> str:
    from llava_jax.data import pack

    return pack.__doc__


def run(args: argparse.Namespace) -> int:
    """Runs a `data` subcommand; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.data_command == "synthetic":
        from llava_jax.demo.synthetic import write_synthetic_dataset

        paths = write_synthetic_dataset(
            args.out_dir,
            num_captions=args.num_captions,
            num_qa=args.num_qa,
            num_eval=args.num_eval,
            image_size=args.image_size,
            seed=args.seed,
        )
        for name, path in paths.items():
            print(f"{name}: {path}")
        return 0
    if args.data_command == "pack":
        from llava_jax.data.pack import pack

        # Errors (DataError in strict mode, PackError) are reported by the `llava-jax` dispatcher.
        summary = pack(
            args.json,
            args.image_root,
            args.out_dir,
            shard_size=args.shard_size,
            on_error=args.on_error,
            workers=args.workers,
            overwrite=args.overwrite,
            allow_outside_root=args.allow_outside_root,
            max_image_bytes=int(args.max_image_mb * 2**20),
        )
        print(
            f"pack: wrote {summary['num_examples']} of {summary['num_input']} examples to "
            f"{args.out_dir}; skipped {sum(summary['skipped'].values())} {summary['skipped'] or ''}"
        )
        return 0
    raise ValueError(f"unknown data command {args.data_command!r}")
