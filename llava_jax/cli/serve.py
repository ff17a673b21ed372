"""`llava-jax serve --model DIR`: an OpenAI-style chat API (and with `--ui` a web chat page) over a model.

Loads the model (`llava_jax.load`: HF, original or llava_jax directories),
opens the port at once (`/health` answers 503 until the model is warm),
compiles the programs a one-image question uses for every row count it will use,
then serves until interrupted. Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import socket
import sys
import threading

DEMO_EXAMPLE_SEEDS = range(9001, 9006)  # scenes in no split of the demo data (as the demo's own chat)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llava-jax serve`."""
    parser.add_argument("--model", required=True, help="model directory (HF LLaVA, original LLaVA or llava_jax)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed at start)")
    parser.add_argument("--max-batch", type=int, default=8, help="most requests decoded together (default 8)")
    parser.add_argument("--ui", action="store_true", help="serve a web chat page at /")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--mesh",
        default="none",
        choices=("none", "auto", "fsdp", "data", "fsdp_tensor"),
        help="device mesh preset for the parameters (default none: one device)",
    )
    parser.add_argument("--vision-tower", help="HF CLIP directory, for original checkpoints without vision weights")
    parser.add_argument("--template", default="vicuna_v1", help="conversation template (default vicuna_v1)")
    parser.add_argument("--model-name", help="the id /v1/models lists (default: the directory's name)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LLAVA_JAX_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every route (default: $LLAVA_JAX_API_KEY, else none)",
    )
    parser.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs")
    parser.add_argument("--allow-local-images", metavar="DIR", help="serve file:// image URLs inside DIR only")
    parser.add_argument("--max-queue", type=int, default=128, help="most waiting requests; more get 429")
    parser.add_argument("--max-body-bytes", type=int, default=16 * 2**20, help="largest request body (16 MiB)")
    parser.add_argument("--max-image-bytes", type=int, default=10 * 2**20, help="largest encoded image (10 MiB)")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="largest image, width x height")
    parser.add_argument("--chunk-tokens", type=int, default=8, help="decode steps between stream updates")
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=2.0,
        help="when idle, wait this long for requests being read to start together",
    )
    parser.add_argument(
        "--examples",
        default="auto",
        choices=("auto", "demo", "none"),
        help="examples on the page (auto: the demo task's when the model uses the demo tokenizer)",
    )
    parser.add_argument("--no-warmup", action="store_true", help="compile on first use instead of before ready")
    parser.add_argument(
        "--warmup-max-tokens",
        type=int,
        default=None,
        help="max_tokens of the warm-up shapes (default: the default answer length; requests whose prompt + "
        "max_tokens round to the same cache size reuse them)",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def _error(message: str) -> int:
    print(f"llava-jax serve: error: {message}", file=sys.stderr)
    return 2


def _mesh(preset: str):
    import jax

    from llava_jax.sharding import MESH_PRESETS, make_mesh

    if preset == "none" or (preset == "auto" and jax.device_count() == 1):
        return None
    return make_mesh(MESH_PRESETS["fsdp" if preset == "auto" else preset])


def uses_demo_tokenizer(model) -> bool:
    """Whether the model speaks the demo task's vocabulary (the shipped synthetic tokenizer)."""
    from llava_jax.demo.synthetic.tokenizer import synthetic_tokenizer

    return model.tokenizer is not None and model.tokenizer.get_vocab() == synthetic_tokenizer().get_vocab()


def demo_examples(image_size: int) -> list[dict]:
    """Page examples from the demo's synthetic task: a fresh scene each and a held-out-style question.

    Returns `{"image": PNG data URL, "question", "answer"}` items, one per question type.
    """
    import random

    from llava_jax.demo.synthetic import make_question, random_scene, render_scene
    from llava_jax.demo.synthetic.language import QUESTION_TYPES

    out = []
    for seed, qtype in zip(DEMO_EXAMPLE_SEEDS, QUESTION_TYPES):
        scene = random_scene(seed)
        buffer = io.BytesIO()
        render_scene(scene, image_size).save(buffer, format="PNG")
        question, answer = make_question(scene, qtype, random.Random(seed), short=True)
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        out.append({"image": url, "question": question, "answer": answer})
    return out


def build(args, model):
    """The engine and app for loaded `model` and the parsed arguments."""
    from llava_jax.data.conversation import get_template
    from llava_jax.serve.app import create_app
    from llava_jax.serve.batching import Engine
    from llava_jax.serve.images import ImagePolicy
    from llava_jax.serve.page import render_page

    engine = Engine(
        model,
        template=get_template(args.template),
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        chunk_tokens=args.chunk_tokens,
        batch_wait_s=args.batch_wait_ms / 1000,
    )
    name = args.model_name or os.path.basename(os.path.normpath(args.model))
    page = None
    if args.ui:
        demo = args.examples == "demo" or (args.examples == "auto" and uses_demo_tokenizer(model))
        examples = demo_examples(model.config.vision.image_size) if demo else []
        page = render_page(name, examples, max_tokens_limit=model.config.llm.max_position_embeddings)
    policy = ImagePolicy(
        max_bytes=args.max_image_bytes,
        max_pixels=args.max_image_pixels,
        allow_remote=args.allow_remote_images,
        local_dir=args.allow_local_images,
    )
    app = create_app(
        engine,
        model_name=name,
        image_policy=policy,
        api_key=args.api_key,
        max_body_bytes=args.max_body_bytes,
        page=page,
    )
    return engine, app, name


def run(args) -> int:
    """Serve until interrupted; 2 for a model or option that cannot serve."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    if args.allow_local_images and not os.path.isdir(args.allow_local_images):
        return _error(f"--allow-local-images {args.allow_local_images!r} is not a directory")
    if args.max_batch < 1:
        return _error(f"--max-batch must be >= 1, got {args.max_batch}")
    import uvicorn

    from llava_jax.api import load
    from llava_jax.convert.tensors import CheckpointError

    try:
        model = load(args.model, dtype=args.dtype, mesh=_mesh(args.mesh), vision_tower=args.vision_tower)
    except (CheckpointError, OSError, ValueError) as e:
        return _error(f"cannot load model {args.model!r}: {e}")
    if model.tokenizer is None:
        return _error(f"{args.model}: the model directory has no tokenizer")
    try:
        engine, app, name = build(args, model)
    except ValueError as e:
        return _error(str(e))
    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as e:
        return _error(f"cannot listen on {args.host}:{args.port}: {e}")
    host, port = sock.getsockname()[:2]
    print(f"llava-jax serve: {name} on http://{host}:{port} (warming up; /health says when ready)", flush=True)
    engine.start(warmup=not args.no_warmup, warmup_max_tokens=args.warmup_max_tokens)

    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level=args.log_level, timeout_graceful_shutdown=5))

    def announce():
        while not engine.ready.wait(0.5):
            if engine.failed:
                server.should_exit = True  # a model that cannot run is not served
                return
        print(f"llava-jax serve: ready on http://{host}:{port}{' (page at /)' if args.ui else ''}", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop()
    if engine.failed:
        return _error(engine.failed)
    return 0
