"""`llava-jax chat`: ask a model about an image from the terminal, answers streamed as they come.

With `--prompt` it prints one answer and exits; otherwise it is an interactive
multi-turn session (as LLaVA's `llava.serve.cli`): the image belongs to the
first user turn and every answer joins the conversation. An empty line or
EOF (Ctrl-D) ends the session; `/reset` starts a new conversation.
"""

from __future__ import annotations

import argparse
import sys

EXIT_COMMANDS = ("", "exit", "quit", "/exit", "/quit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llava-jax chat`."""
    parser.add_argument("--model", required=True, help="model directory (HF LLaVA, original LLaVA or llava_jax)")
    parser.add_argument("--image", help="image file (omit for a text-only chat)")
    parser.add_argument("--prompt", help="ask this once, print the answer and exit (default: interactive)")
    parser.add_argument(
        "--template",
        default="vicuna_v1",
        help="conversation template: vicuna_v1, llava_v1, plain, llava_hf (default vicuna_v1)",
    )
    parser.add_argument("--temperature", type=float, default=0.2, help="0 for greedy (default 0.2, as LLaVA's CLI)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="most tokens per answer (default 512, or what the context leaves)",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--vision-tower", help="HF CLIP directory, for original checkpoints without vision weights")
    parser.add_argument("--no-stream", action="store_true", help="print each answer whole instead of streaming")
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        help="refuse images with more pixels than this (default: PIL's decompression-bomb limit, ~179 million)",
    )


def _error(message: str) -> int:
    print(f"llava-jax chat: error: {message}", file=sys.stderr)
    return 2


def _answer(model, image, turns, args, out) -> str:
    from llava_jax.infer.chat import chat

    stream = None
    if not args.no_stream:

        def stream(deltas):
            out.write(deltas[0])
            out.flush()

    sampling = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "seed": args.seed}
    answer = chat(
        model, image, [turns], template=args.template, max_new_tokens=args.max_new_tokens, stream=stream, **sampling
    )[0]
    if args.no_stream:
        out.write(answer)
    out.write("\n")
    out.flush()
    return answer


def run(args, stdin=None, stdout=None) -> int:
    """Run the chat; returns the exit status (2 for bad input, with the reason on stderr)."""
    from llava_jax.api import load
    from llava_jax.convert.tensors import CheckpointError
    from llava_jax.infer.chat import ImageError, load_pixels

    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    image = None
    if args.max_image_pixels is not None:
        from llava_jax.data.image import set_max_image_pixels

        set_max_image_pixels(args.max_image_pixels)
    if args.image:
        from llava_jax.data.image import load_image

        try:  # before the model loads: a bad image fails in a second, not after minutes
            image = load_image(args.image)
        except (OSError, ValueError, SyntaxError) as e:  # PIL reports bad files as OSError subclasses
            return _error(f"cannot read image {args.image!r}: {type(e).__name__}: {e}")
    try:
        model = load(args.model, dtype=args.dtype, vision_tower=args.vision_tower)
    except (CheckpointError, OSError, ValueError) as e:
        return _error(f"cannot load model {args.model!r}: {e}")
    if model.tokenizer is None:
        return _error(f"{args.model}: the model directory has no tokenizer")
    if image is not None:
        try:
            load_pixels(image, model.config)  # fail now, not after the first question
        except ImageError as e:
            return _error(str(e))

    if args.prompt is not None:
        try:
            _answer(model, image, [("user", args.prompt)], args, out)
        except ValueError as e:
            return _error(str(e))
        return 0

    turns: list[tuple[str, str]] = []
    while True:
        out.write("USER: ")
        out.flush()
        line = stdin.readline()
        if not line or line.strip() in EXIT_COMMANDS:
            out.write("\n" if not line else "")
            return 0
        question = line.strip()
        if question == "/reset":
            turns = []
            continue
        out.write("ASSISTANT: ")
        out.flush()
        try:
            answer = _answer(model, image, turns + [("user", question)], args, out)
        except ValueError as e:
            # Typically the conversation outgrew the context: say so and keep the session usable.
            print(f"\nllava-jax chat: error: {e} (type /reset to start over)", file=sys.stderr)
            continue
        turns += [("user", question), ("assistant", answer)]
