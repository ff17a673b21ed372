"""`llava-jax demo`: train a small LLaVA end to end on the synthetic shapes task, evaluate it, chat with it.

  llava-jax demo [--workdir DIR] [--quick] [--hd]

Steps, each skipped when its output already exists (so a rerun resumes):

  data     `write_synthetic_dataset` -> DIR/data (captions, QA, held-out questions)
  stage0a  tower pretraining (not LLaVA; stands in for CLIP): the random vision
           tower trained as a scene classifier on the stage-1 images -> DIR/stage0a
  stage0b  LLM pretraining (not LLaVA; stands in for Vicuna): projector + LLM on
           the captions with images and the conversations as text only -> DIR/stage0b
  towers   stage 0's tower and LLM with a fresh projector -> DIR/towers
  stage1   LLaVA stage 1: projector only, captions, `plain` -> DIR/stage1
  stage2   LLaVA stage 2: projector + LLM, QA, `vicuna_v1` -> DIR/stage2
  export   stage 2's model as an HF LLaVA directory -> DIR/hf
  eval     greedy answers to the held-out questions, exact match per type beside
           chance -> DIR/eval/predictions.jsonl, DIR/results.json
  plot     the stages' loss curves -> DIR/loss.png
  chat     answers about a freshly generated image -> DIR/chat/

`--hd` (LLaVA-1.5-HD): the data are 168-px scenes with shapes a third of the
size (`configs/demo.py:hd`), legible only at full resolution; stages 0a-1 are
as above (the tower still pretrained on 56-px scenes), then stage 2 runs twice
from the same stage-1 model: `stage2` on the images downsampled to 56 px and
`stage2hd` on 3x3 tiles of 56 px plus a global view (`anyres`); both answer the
held-out questions (DIR/eval, DIR/eval_hd) and the accuracies are printed side
by side (`results.json["hd_comparison"]`); export and chat use the HD model.

Stages 0b, 1 and 2 go through `llava_jax.train.loop.run` (the `llava-jax
train` path: grain pipeline, orbax checkpoints, the sharded step) with the
experiment configs of `configs/demo.py`; an interrupted stage resumes from its
last checkpoint. An output that exists is reused unless an earlier step ran
again (then it is rebuilt). Step times land in DIR/timings.json;
`results.json["minutes"]` is their total over the runs that built the workdir.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

STAGES = (
    ("stage0b", "LLM pretraining (projector + LLM; captions with images, conversations as text)"),
    ("stage1", "LLaVA stage 1 (projector; captions, plain)"),
    ("stage2", "LLaVA stage 2 (projector + LLM; QA, vicuna_v1)"),
)
HD_STAGE = ("stage2hd", "LLaVA-1.5-HD stage 2 (projector, newline + LLM; QA on 3x3 tiles + a global view)")


def default_config_path() -> str:
    """The demo's experiment file inside the package (`llava_jax/demo/config.py`): no source tree needed."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py")


def default_cpu_devices(cores: int | None = None) -> int:
    """One CPU device per core, rounded down to a power of 2 and at most 16 (the demo's batch is 16).

    On the 2-core dev box two devices (half a batch each) measured 0.200 s per
    stage-2 step against 0.228 s for one device over 40 steps (bench/RESULTS.md,
    "The demo", session 4). Full runs were slower (0.33-0.38 s), mostly from host
    page faults, which huge pages remove (`llava_jax.runtime.hugepages`, session 5).
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = 1
    while n * 2 <= min(cores, 16):
        n *= 2
    return n


def _set_cpu_devices(n: int) -> None:
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # JAX already started (e.g. the demo called from a test): keep its devices
        _log(f"JAX already started: keeping {jax.device_count()} device(s) instead of {n} CPU devices")


class Timings:
    """Seconds per demo step, persisted in `DIR/timings.json`, so a rerun reports what building the workdir took.

    A step that runs again replaces its entry, except that the runs of an
    interrupted step (`finished=False`) add up until it finishes; a reused step
    keeps its recorded time.
    """

    def __init__(self, path: str):
        self.path = path
        self.steps: dict[str, float] = {}
        self.unfinished: set[str] = set()
        self.reused: set[str] = set()
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            self.steps = {k: float(v) for k, v in saved.get("seconds", {}).items()}
            self.unfinished = set(saved.get("unfinished", ()))

    def record(self, name: str, seconds: float, *, reused: bool = False, finished: bool = True) -> None:
        """Note that step `name` took `seconds` (or was reused) and save."""
        if reused:
            self.reused.add(name)
            self.steps.setdefault(name, 0.0)
        else:
            self.reused.discard(name)
            before = self.steps.get(name, 0.0) if name in self.unfinished else 0.0
            self.steps[name] = before + seconds
            (self.unfinished.discard if finished else self.unfinished.add)(name)
        with open(self.path, "w") as f:
            json.dump({"seconds": self.steps, "unfinished": sorted(self.unfinished)}, f, indent=2)

    @property
    def total_minutes(self) -> float:
        return sum(self.steps.values()) / 60.0


def _log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _stage_config(config_path: str, stage: str, quick: bool, *, data: tuple[str, str], init_path: str, progress: bool):
    """The training config of `stage`, reading `data` = (LLaVA JSON, image root) from `init_path`."""
    from llava_jax.train.experiment import load_config

    cfg = load_config(f"{config_path}:{stage}{'_quick' if quick else ''}")
    cfg.data.json, cfg.data.image_root = data
    cfg.progress = progress
    if init_path is not None:
        cfg.init.path = init_path
    return cfg


def _finished(model_dir: str) -> bool:
    return os.path.exists(os.path.join(model_dir, "config.json"))


def export_hf(final_dir: str, out_dir: str) -> None:
    """The final model as an HF LLaVA directory, written under `out_dir.partial` and renamed when complete."""
    import shutil

    from llava_jax.api import load

    staging = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    load(final_dir).export_hf(staging)
    os.replace(staging, out_dir)


def _enable_compilation_cache(workdir: str) -> None:
    """Cache compiled programs in `workdir/jax_cache`, unless a cache is configured already
    (`JAX_COMPILATION_CACHE_DIR`, e.g. the test suite's): that one is kept, so a caller's cache is never
    switched midway."""
    import jax

    try:
        if jax.config.jax_compilation_cache_dir:
            return
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except (AttributeError, KeyError, ValueError) as e:  # a jax without these options: compile every time
        _log(f"no persistent compilation cache ({type(e).__name__}: {e})")


class _Steps:
    """Runs demo steps in order: a step whose output exists is reused unless an earlier step ran again."""

    def __init__(self, timings: Timings):
        self.timings = timings
        self.rerun_below = False  # an earlier step produced new output: later outputs are stale

    def __call__(self, name: str, output: str, action, *, done: bool | None = None, message: str = "") -> bool:
        """Run `action()` unless `output` (a file or directory) is complete; True when it ran."""
        import shutil

        done = os.path.exists(output) if done is None else done
        if done and not self.rerun_below:
            _log(f"{name}: {message}{' - ' if message else ''}reused {output}")
            self.timings.record(name, 0.0, reused=True)
            return False
        if done:  # stale: built from outputs that were just replaced
            shutil.rmtree(output, ignore_errors=True) if os.path.isdir(output) else os.remove(output)
        _log(f"{name}: {message}")
        t0 = time.time()
        finished = False
        try:
            action()
            finished = True
        finally:
            self.timings.record(name, time.time() - t0, finished=finished)
        self.rerun_below = True
        return True


def run(args: argparse.Namespace) -> int:
    """Every demo step in order (see the module docstring); prints a summary; 0 on success."""
    t_start = time.time()
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.abspath(args.config or default_config_path())
    if not os.path.exists(config_path):
        print(f"llava-jax demo: experiment file {config_path} not found (pass --config)", file=sys.stderr)
        return 2
    _set_cpu_devices(args.cpu_devices or default_cpu_devices())
    _enable_compilation_cache(workdir)
    from llava_jax.api import load
    from llava_jax.demo import report
    from llava_jax.demo import towers as demo_towers
    from llava_jax.demo.config import STAGE_DATA
    from llava_jax.demo.synthetic import (
        synthetic_dataset_is_current,
        synthetic_dataset_paths,
        synthetic_tokenizer_path,
        write_synthetic_dataset,
    )
    from llava_jax.train.experiment import load_config
    from llava_jax.train.loop import run as train

    progress = not args.no_progress
    hd = bool(getattr(args, "hd", False))
    suffix = "_quick" if args.quick else ""
    timings = Timings(os.path.join(workdir, "timings.json"))
    step = _Steps(timings)
    data_dir = os.path.join(workdir, "data")
    names = ("stage0a", "stage0b", "stage1", "stage2") + (("stage2hd",) if hd else ())
    dirs = {name: os.path.join(workdir, name) for name in names}
    towers_dir, hf_dir = os.path.join(workdir, "towers"), os.path.join(workdir, "hf")
    final_dir = os.path.join(dirs["stage2hd" if hd else "stage2"], "final")
    _log(f"workdir {workdir}{' (quick variant)' if args.quick else ''}{' (HD variant)' if hd else ''}")

    tower_cfg = load_config(f"{config_path}:stage0a{suffix}")
    # The tower is pretrained on 56-px scenes either way; --hd trains LLaVA on its own high-resolution data.
    syn = load_config(f"{config_path}:hd{suffix}").synthetic if hd else tower_cfg.synthetic
    paths = synthetic_dataset_paths(data_dir)
    data_args = {k: syn[k] for k in ("num_captions", "num_qa", "num_eval", "image_size", "seed")}
    if hd:
        data_args["shape_scale"] = float(syn.shape_scale)
    step(
        "data",
        paths["manifest"],
        lambda: write_synthetic_dataset(data_dir, **data_args),
        # Other arguments or an older generator: the data and every stage after it are rebuilt.
        done=synthetic_dataset_is_current(data_dir, **data_args),
        message=f"{syn.num_captions} captions, {syn.num_qa} conversations, {syn.num_eval} held-out questions, "
        f"{syn.image_size} px",
    )
    tower_init = os.path.join(dirs["stage0a"], "init")
    step(
        "stage0a",
        dirs["stage0a"],
        lambda: demo_towers.run_tower_stage(tower_cfg, dirs["stage0a"], synthetic_tokenizer_path(), progress=progress),
        done=_finished(tower_init),
        message="tower pretraining (the vision tower as a scene classifier)",
    )

    stage1_final = os.path.join(dirs["stage1"], "final")
    inits = {"stage0b": tower_init, "stage1": towers_dir, "stage2": stage1_final, "stage2hd": stage1_final}
    paths["language"] = os.path.join(workdir, "stage0b_language.json")
    for name, title in STAGES + ((HD_STAGE,) if hd else ()):
        final = os.path.join(dirs[name], "final")
        data = (paths[STAGE_DATA[name]], paths["image_root"])
        cfg = _stage_config(config_path, name, args.quick, data=data, init_path=inits[name], progress=progress)
        if name == "stage0b" and (not os.path.exists(paths["language"]) or step.rerun_below):
            demo_towers.write_language_mix(paths["captions"], paths["qa"], paths["language"])
        step(name, dirs[name], functools.partial(train, cfg, dirs[name]), done=_finished(final), message=title)
        if name == "stage0b":
            step(
                "towers",
                towers_dir,
                functools.partial(demo_towers.make_towers, final, towers_dir),
                done=_finished(towers_dir),
                message="stage 0's tower and LLM with a fresh projector",
            )
    step("export", hf_dir, lambda: export_hf(final_dir, hf_dir), done=_finished(hf_dir), message="HF LLaVA directory")

    def evaluate(name: str, model_dir: str, title: str) -> tuple[object, dict]:
        model = load(model_dir)
        predictions = os.path.join(workdir, name, "predictions.jsonl")
        scores: dict = {}
        ran = step(
            name,
            predictions,
            lambda: scores.update(
                report.evaluate(
                    model,
                    paths["eval"],
                    paths["image_root"],
                    predictions,
                    batch_size=args.eval_batch_size,
                    progress=progress,
                )
            ),
            message=title,
        )
        if not ran:  # scored from the saved answers
            scores = report.evaluate(model, paths["eval"], paths["image_root"], predictions)
        return model, scores

    model, scores = evaluate("eval", os.path.join(dirs["stage2"], "final"), "greedy answers to the held-out questions")
    comparison = None
    if hd:
        base_scores = scores
        model, scores = evaluate("eval_hd", final_dir, "the HD model's greedy answers to the held-out questions")
        comparison = report.hd_comparison(base_scores, scores)

    t0 = time.time()
    curves = report.plot_losses(dirs, os.path.join(workdir, "loss.png"))
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    drawn = {"image_size": syn.image_size, "shape_scale": float(syn.shape_scale)} if hd else {}
    chat = report.chat_about_fresh_image(model, seed, os.path.join(workdir, "chat"), **drawn)
    timings.record("plot+chat", time.time() - t0)
    results = report.write_results(
        os.path.join(workdir, "results.json"),
        scores,
        timings,
        curves,
        model=model,
        quick=args.quick,
        tower_accuracy=report.read_json(os.path.join(dirs["stage0a"], "accuracy.json")),
        hd_comparison=comparison,
    )
    report.print_summary(results, timings, curves, chat, workdir=workdir, this_run_s=time.time() - t_start)
    return 0
