"""`llava-jax eval`: one benchmark of the LLaVA-1.5 suite, resumable, scored locally.

    llava-jax eval --model PATH --benchmark pope --data playground/data/eval/pope \\
        --out runs/pope [--batch-size 16] [--limit 100]

Answers go to OUT/answers.jsonl as they are produced (rerun the same command
to resume), every figure to OUT/results.json, and a summary beside the
paper's Model Zoo value is printed. See docs/eval.md for each benchmark's files.
"""

from __future__ import annotations

import argparse
import sys

from llava_jax.eval.common import DataConfig, EvalDataError
from llava_jax.eval.prompts import TEMPLATES
from llava_jax.eval.registry import BENCHMARKS, SIZES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `eval` subcommand's options."""
    parser.add_argument("--model", help="model directory for llava_jax.load (omit with --score-only)")
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument(
        "--data",
        required=True,
        help="the benchmark's folder in LLaVA's playground/data/eval layout",
    )
    parser.add_argument("--out", required=True, help="output folder (answers, results, uploads)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="questions per generate call (the reference uses 1)",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="decoding budget (default: the reference script's, 128 or 1024)",
    )
    parser.add_argument("--template", default="vicuna_v1", choices=TEMPLATES)
    parser.add_argument("--question-file", help="override the question file (relative to --data)")
    parser.add_argument("--image-folder", help="override the image folder (relative to --data)")
    parser.add_argument(
        "--annotation-file",
        help="override / provide ground truth (e.g. a VQAv2 or VizWiz val annotation)",
    )
    parser.add_argument(
        "--all-rounds",
        action="store_true",
        help="MMBench: also ask every rotation of the options",
    )
    parser.add_argument(
        "--model-size",
        choices=SIZES + tuple(s.lower() for s in SIZES),
        help="Model Zoo column to compare with (default: inferred from the model)",
    )
    parser.add_argument(
        "--length-multiple",
        type=int,
        default=64,
        help="pad prompt lengths to a multiple of this (fewer recompilations)",
    )
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        help="parameter / compute dtype for llava_jax.load (the reference ran float16)",
    )
    parser.add_argument(
        "--mesh",
        default="auto",
        choices=("auto", "none", "fsdp", "data", "fsdp_tensor"),
        help="device mesh preset (auto: fsdp over all devices when there are several)",
    )
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="score OUT/answers.jsonl without loading a model",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read image references that lead outside the image folder (absolute, '..', symbolic links)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 on success, 2 on missing or inconsistent data."""
    from llava_jax.eval.evaluate import evaluate, format_table

    if not args.score_only and not args.model:
        print("llava-jax eval: --model is required unless --score-only", file=sys.stderr)
        return 2
    data = DataConfig(
        data_dir=args.data,
        question_file=args.question_file,
        image_folder=args.image_folder,
        annotation_file=args.annotation_file,
        limit=args.limit,
        all_rounds=args.all_rounds,
        allow_outside_root=args.allow_outside_root,
    )
    answerer = None
    size = args.model_size.upper() if args.model_size else None
    if not args.score_only:
        from llava_jax.eval.model_answerer import ModelAnswerer

        answerer = ModelAnswerer.from_path(
            args.model,
            batch_size=args.batch_size,
            dtype=args.dtype,
            mesh=_mesh(args.mesh),
            length_multiple=args.length_multiple,
        )
        size = size or answerer.model_size
    try:
        results = evaluate(
            args.benchmark,
            answerer,
            data,
            args.out,
            # The answerer rounds the batch up to whole shards of the mesh.
            batch_size=answerer.batch_size if answerer else args.batch_size,
            max_new_tokens=args.max_new_tokens,
            template=args.template,
            model_size=size,
            model_path=args.model,
            progress=not args.no_progress,
        )
    except EvalDataError as err:
        print(f"llava-jax eval: {err}", file=sys.stderr)
        return 2
    print(format_table(results))
    return 0


def _mesh(preset: str):
    """The device mesh for a `--mesh` preset, None for a single device."""
    import jax

    from llava_jax.sharding import MESH_PRESETS, make_mesh

    if preset == "none" or (preset == "auto" and jax.device_count() == 1):
        return None
    return make_mesh(MESH_PRESETS["fsdp" if preset == "auto" else preset])
