"""`python -m llava_jax.demo.synthetic build-tokenizer [OUT_DIR]`: rebuild the shipped tokenizer.

`python -m llava_jax.demo.synthetic write OUT_DIR [--num-captions N ...]`
writes a dataset (see `write_synthetic_dataset`).
"""

import argparse

from llava_jax.demo.synthetic.dataset import write_synthetic_dataset
from llava_jax.demo.synthetic.tokenizer import ASSET_DIR, build_synthetic_tokenizer


def main(argv=None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m llava_jax.demo.synthetic")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build-tokenizer", help="rebuild the tokenizer asset")
    build.add_argument("out_dir", nargs="?", default=ASSET_DIR)
    write = sub.add_parser("write", help="write a synthetic dataset")
    write.add_argument("out_dir")
    write.add_argument("--num-captions", type=int, default=2000)
    write.add_argument("--num-qa", type=int, default=4000)
    write.add_argument("--num-eval", type=int, default=500)
    write.add_argument("--image-size", type=int, default=84)
    write.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "build-tokenizer":
        print(build_synthetic_tokenizer(args.out_dir))
    else:
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


if __name__ == "__main__":
    main()
