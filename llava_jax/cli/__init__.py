"""The `llava-jax` command: a thin dispatcher over one module per subcommand (`llava_jax.cli.NAME`).

Each subcommand module exposes `add_arguments(parser)` and
`run(args) -> int`; modules are imported only when their subcommand runs, so
`llava-jax chat` never imports the training stack.

Expected failures (bad input, configuration or data; a diverged run) end in
one line on stderr, `llava-jax COMMAND: error: MESSAGE`, and exit status 2,
for every subcommand alike: the message names the file, key or sample at
fault. `--debug` (anywhere on the line) or `LLAVA_JAX_DEBUG=1` shows the
traceback instead. Expected are `ValueError` (which `ConfigError`,
`CheckpointError`, `DataError`, `EvalDataError`, `ImageError` and the
validators' errors are), `OSError` (missing or unreadable files) and
`TrainingDiverged`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

SUBCOMMANDS = {
    "convert": ("llava_jax.cli.convert", "convert a HF / original LLaVA checkpoint to llava_jax"),
    "export": ("llava_jax.cli.export", "export a llava_jax checkpoint to an HF LLaVA directory"),
    "chat": ("llava_jax.cli.chat", "chat with a model about an image"),
    "train": ("llava_jax.cli.train", "train stage 1 or stage 2 from a config file"),
    "data": ("llava_jax.cli.data", "data tools (pack LLaVA JSON into ArrayRecord shards, the synthetic set)"),
    "eval": ("llava_jax.cli.eval", "run a benchmark of the LLaVA-1.5 evaluation suite"),
    "demo": ("llava_jax.cli.demo", "train a small LLaVA end to end on a synthetic task and chat with it"),
    "plan": ("llava_jax.cli.plan", "memory plan for a config on a mesh"),
    "serve": ("llava_jax.cli.serve", "serve a model over an OpenAI-style HTTP API (and a web chat page)"),
}
# Subcommands that run XLA:CPU training steps: re-executed with huge pages for the host heap.
HUGEPAGE_SUBCOMMANDS = ("demo", "train")
DEBUG_FLAG = "--debug"
DEBUG_ENV = "LLAVA_JAX_DEBUG"
ERROR_STATUS = 2


def is_expected(error: BaseException) -> bool:
    """Whether `error` is an expected failure (module docstring), reported in one line."""
    if isinstance(error, (ValueError, OSError)):
        return True
    # Looked up, not imported: a TrainingDiverged exists only once the trainer's module is loaded,
    # and importing it here would load the training stack for every subcommand.
    guards = sys.modules.get("llava_jax.train.guards")
    return guards is not None and isinstance(error, guards.TrainingDiverged)


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return " ".join(text.split())


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `only`, imports just that subcommand's module."""
    parser = argparse.ArgumentParser(prog="llava-jax", description="LLaVA-1.5 in JAX/Flax")
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help=f"show tracebacks of expected errors (or set {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `llava-jax` console script (`argv` None: the process's own arguments)."""
    launched = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    only = next((a for a in argv if not a.startswith("-")), None)
    if only not in SUBCOMMANDS:
        only = None
    if launched and only in HUGEPAGE_SUBCOMMANDS:
        from llava_jax.runtime.hugepages import reexec_with_hugepages

        reexec_with_hugepages(
            ["-m", "llava_jax.cli", *argv, *([DEBUG_FLAG] if debug else [])]
        )  # runs llava_jax/cli/__main__.py  # returns when already on (or not applicable)
    parser = build_parser(only)
    # `--config.a.b=v` overrides pass through untouched (argparse would take them for `--config`).
    overrides = [a for a in argv if a.startswith("--config.")]
    args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
    args.config_overrides = overrides
    args.debug = debug
    try:
        return int(args._module.run(args) or 0)
    except Exception as error:
        if debug or not is_expected(error):
            raise
        print(f"llava-jax {args.command}: error: {_one_line(error)} (--debug for the traceback)", file=sys.stderr)
        return ERROR_STATUS
