"""`llava-jax train`: one LLaVA-1.5 stage from an experiment config, sharded, checkpointed, resumable.

Resume order: this workdir's newest checkpoint, else the configured initial
weights. A finished run leaves `WORKDIR/final/` (a llava_jax checkpoint with
LoRA merged) and, with `export_hf`, `WORKDIR/hf/`; re-running a finished
workdir does nothing.

How a run ends (the exit status of `llava-jax train`; `llava_jax/runtime/exit_codes.py`):

- 0: finished after `num_steps` (or the estimated steps of `data.num_epochs`) or
  at the end of the data. With several processes the end of the data is agreed:
  each batch's "this process has it" flag is reduced over all processes and the
  first batch any process lacks ends the run for all at the same step
  (`llava_jax/train/feed.py`), so uneven per-process packing never hangs.
- 2: a bad config, input or data, or a diverged run (`llava_jax.cli`).
- 75 (`PEER_LOST`): another process died (`llava_jax/runtime/distributed.py`).
- 76 (`PREEMPTED`): SIGTERM or SIGUSR1. Every process stops at the same step
  (JAX's preemption sync point with several processes, the next step boundary
  alone), saves that step's checkpoint off the interval, waits until it is on
  disk and raises `Preempted` (`llava_jax/runtime/preemption.py`). Restarting
  resumes from it bit for bit.
- 77 (`STALLED`): no step finished within `watchdog.timeout_s` (`watchdog.startup_s`
  before the first step; compilations and checkpoint saves get their own
  allowance): every process dumps all thread stacks and the phase it was in to
  stderr and exits (`llava_jax/runtime/watchdog.py`).

75, 76 and 77 mean "restart every process"; the run resumes from its newest
checkpoint, and `metrics.jsonl` keeps one row per step (the rows redone are
replaced; the restart's cost is logged, see `llava_jax/train/goodput.py`).
"""

from __future__ import annotations

import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from llava_jax.convert.export import export_hf as write_hf
from llava_jax.convert.loaders import (
    LoadedModel,
    load_components,
    load_model,
    load_tokenizer,
    projector_file,
    random_model,
    with_image_newline,
)
from llava_jax.convert.native import save_native
from llava_jax.model.lora import add_lora, merge_lora
from llava_jax.model.params import merge_trees, param_logical_axes
from llava_jax.presets import PRESETS
from llava_jax.runtime.exit_codes import PREEMPTED_EXIT_CODE
from llava_jax.runtime.preemption import Preempted, PreemptionWatch
from llava_jax.runtime.watchdog import Watchdog
from llava_jax.sharding import DEFAULT_RULES, batch_sharding, make_mesh, mesh_config_from, mesh_context, tree_shardings
from llava_jax.train.checkpoint import Checkpointer
from llava_jax.train.feed import Feed
from llava_jax.train.flops import peak_flops, train_step_flops
from llava_jax.train.goodput import Goodput, ProfileWindow
from llava_jax.train.guards import DivergenceGuard, SkipGuard, TrainingDiverged
from llava_jax.train.metrics import MetricsWriter
from llava_jax.train.partition import split
from llava_jax.train.state import init_state, model_config, optimizer_for
from llava_jax.train.step import BATCH_KEYS, TrainState, jit_train_step
from llava_jax.train.validate import check_source, validate_config

log = logging.getLogger(__name__)
FINAL_DIR = "final"
__all__ = ["Preempted", "TrainingDiverged", "run"]  # both defined elsewhere; importable from here


def is_primary() -> bool:
    return jax.process_index() == 0


# ------------------------------------------------------------------------ model
def initial_model(cfg: ml_collections.ConfigDict, mesh, rules=DEFAULT_RULES) -> LoadedModel:
    """Initial weights (float32, sharded on `mesh`) with the config's model overrides and LoRA applied."""
    init = cfg.init
    if init.kind == "random":
        if init.preset not in PRESETS:
            raise ValueError(f"init.preset {init.preset!r} not in {sorted(PRESETS)}")
        kwargs = {k: init[k] for k in ("vocab_size", "image_token_index", "image_size") if init[k]}
        model = random_model(PRESETS[init.preset](**kwargs), seed=cfg.seed, mesh=mesh, rules=rules)
    elif init.kind == "llava":
        model = load_model(init.path, dtype="float32", mesh=mesh, rules=rules)
    elif init.kind == "components":
        # A stage-1 release (mm_projector.bin) joins the towers directly; a whole model is a donor below.
        projector = init.projector_from if init.projector_from and projector_file(init.projector_from) else None
        model = load_components(
            init.vision_dir,
            init.llm_dir,
            projector=projector,
            dtype="float32",
            mesh=mesh,
            rules=rules,
            seed=cfg.seed,
        )
    else:
        raise ValueError(f"init.kind {init.kind!r} not in ('random', 'llava', 'components')")
    if init.projector_from and not (init.kind == "components" and projector_file(init.projector_from)):
        donor = load_model(init.projector_from, dtype="float32", mesh=mesh, rules=rules)
        model.params["projector"] = donor.params["projector"]
    config = model_config(cfg, model.config)
    # An HD run from a LLaVA-1.5 model starts its image_newline fresh.
    params = with_image_newline(model.params, config, jax.random.PRNGKey(cfg.seed + 2), mesh, rules)
    if cfg.lora.rank:
        params = add_lora(params, config, jax.random.PRNGKey(cfg.seed + 1))
        params = jax.device_put(params, tree_shardings(param_logical_axes(config), params, mesh, rules))
    tokenizer = model.tokenizer
    if cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer)
    if tokenizer is None:
        raise ValueError("no tokenizer: set config.tokenizer or use an init directory that has one")
    return LoadedModel(config, params, tokenizer, mesh, rules)


# ------------------------------------------------------------------------- data
def data_config(cfg, model: LoadedModel):
    """The pipeline's `DataConfig` for this experiment and model."""
    from llava_jax.data.pipeline import DataConfig

    d, c = cfg.data, model.config
    if (d.image_mode == "anyres") != bool(c.anyres):
        raise ValueError(
            f"data.image_mode {d.image_mode!r} but the model's image_aspect_ratio is {c.image_aspect_ratio!r}: "
            "high-resolution training sets both to 'anyres' (model.image_aspect_ratio, data.image_mode)"
        )
    pad_id = model.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = model.tokenizer.unk_token_id or 0
    return DataConfig(
        template=d.template,
        image_mode=d.image_mode,
        image_size=c.vision.image_size,
        image_seq_length=c.image_seq_length,
        image_token_index=c.image_token_index,
        max_length=d.max_length,
        global_batch_size=cfg.batch_size,
        batching=d.batching,
        max_images_per_row=d.max_images_per_row,
        pack_length=d.pack_length or None,
        pack_window=d.pack_window,
        pad_multiple=d.pad_multiple,
        group_factor=d.group_factor,
        seed=cfg.seed,
        num_epochs=d.num_epochs if d.num_epochs else None,
        num_workers=d.num_workers,
        read_threads=d.read_threads,
        read_buffer=d.read_buffer,
        on_error=d.on_error,
        pad_token_id=int(pad_id),
        max_image_bytes=int(d.get("max_image_mb", 256) * 2**20),
        anyres=c.anyres,
    )


def estimate_steps(cfg, source, data_cfg, tokenizer) -> int:
    """Optimizer steps: `num_steps`, else one pass of `num_epochs` over the source.

    Padding: samples / batch. Packing: rows estimated by encoding a sample of the
    source and packing it as the pipeline does (`estimate_rows`).
    """
    if cfg.num_steps:
        return int(cfg.num_steps)
    from llava_jax.data.pipeline import estimate_rows

    epochs = cfg.data.num_epochs or 1
    rows = estimate_rows(data_cfg, source, tokenizer, seed=cfg.seed) * epochs
    return max(1, math.ceil(rows / cfg.batch_size))


def build_mesh(cfg):
    """The (data, fsdp, tensor) mesh of `cfg.mesh`: a named preset or explicit sizes, plus `dcn_*`."""
    devices = jax.devices()[: cfg.mesh.num_devices] if cfg.mesh.get("num_devices") else None
    return make_mesh(mesh_config_from(cfg.mesh), devices)


# ------------------------------------------------------------------------ state
def _checkpoint_tree(state: TrainState) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng}


def _describe_memory(compiled) -> str:
    try:
        mem = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        return "memory analysis unavailable"
    if mem is None:
        return "memory analysis unavailable"
    gib = lambda n: f"{n / 2**30:.3f} GiB"
    return (
        f"arguments {gib(mem.argument_size_in_bytes)}, outputs {gib(mem.output_size_in_bytes)} "
        f"(aliased {gib(mem.alias_size_in_bytes)}), temporaries {gib(mem.temp_size_in_bytes)} per device"
    )


# ------------------------------------------------------------------------- run
def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train one stage into `workdir`; returns a summary dict (steps, last loss, paths).

    Raises `ConfigError` (before anything is written) for an impossible config or empty data,
    `TrainingDiverged` / `TooManySkipped` when a guard stops the run (never leaving `final/`),
    `Preempted` (a `SystemExit` with status 76) after the checkpoint of the agreed step is written
    on SIGTERM/SIGUSR1. A stall past `watchdog.timeout_s` ends the process with status 77.
    """
    validate_config(cfg)
    workdir = os.path.abspath(workdir)
    final_dir = os.path.join(workdir, FINAL_DIR)
    if os.path.exists(os.path.join(final_dir, "config.json")):
        if is_primary():
            print(f"{workdir}: already finished ({final_dir} exists); nothing to do")
        return {"finished": True, "final": final_dir, "resumed": True, "steps": None}
    profile = ProfileWindow.from_config(cfg, workdir)  # a bad window is an error before anything runs
    wd = cfg.get("watchdog") or {}
    watchdog = Watchdog(
        float(wd.get("timeout_s", 0.0)),
        startup_s=float(wd.get("startup_s", 0.0)) or None,
        who=f"process {jax.process_index()} of {jax.process_count()}",
    )
    with watchdog, PreemptionWatch() as preemption:
        return _train(cfg, workdir, final_dir, watchdog, preemption, profile)


def _train(cfg, workdir: str, final_dir: str, watchdog: Watchdog, preemption: PreemptionWatch, profile) -> dict:
    from llava_jax.data.pipeline import create_loader
    from llava_jax.data.sources import open_source

    watchdog.phase("opening the data")
    source = open_source(
        cfg.data.json, cfg.data.image_root, allow_outside_root=cfg.data.get("allow_outside_root", False)
    )
    check_source(cfg, source)
    os.makedirs(workdir, exist_ok=True)
    if is_primary():
        with open(os.path.join(workdir, "experiment.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))
    watchdog.phase("loading the initial model")
    mesh = build_mesh(cfg)
    model = initial_model(cfg, mesh)
    data_cfg = data_config(cfg, model)
    total_steps = estimate_steps(cfg, source, data_cfg, model.tokenizer)
    optimizer, lr_fn = optimizer_for(cfg, total_steps, split(model.params, list(cfg.trainable))[0])
    state = init_state(cfg, model.config, model.params, optimizer, mesh, model.rules)
    model.params = None  # the state holds the weights now
    feed = Feed(create_loader(data_cfg, source, model.tokenizer, mesh=mesh, rules=model.rules))
    ckpt = Checkpointer(
        cfg.checkpoint.get("directory") or os.path.join(workdir, "checkpoints"),
        every_steps=cfg.checkpoint.every_steps,
        keep=cfg.checkpoint.keep,
        async_save=cfg.checkpoint.async_save,
        atomicity=cfg.checkpoint.get("atomicity", "auto"),
    )
    watchdog.phase("restoring the checkpoint")
    start = ckpt.latest_step()
    if start is not None:
        state = state.replace(**ckpt.restore(start, _checkpoint_tree(state), feed))
        if ckpt.restored_step is not None:
            start = ckpt.restored_step  # an unreadable newest step falls back to an older one
        if is_primary():
            print(f"resumed from {ckpt.directory} step {start}")
    step_fn = jit_train_step(
        config=model.config,
        optimizer=optimizer,
        lr_fn=lr_fn,
        micro_batches=cfg.micro_batches,
        freeze_vision=cfg.model.freeze_vision,
        loss_chunk=cfg.loss_chunk,
        state_shardings=jax.tree.map(lambda x: x.sharding, state),
        batch_sharding=batch_sharding(mesh, model.rules),
    )
    writer = MetricsWriter(workdir, enabled=is_primary(), resume_step=start or 0)
    goodput = Goodput(writer.restart_info())
    peak = peak_flops(jax.devices()[0].device_kind, cfg.peak_tflops * 1e12 if cfg.peak_tflops else None)
    log_every = int(cfg.get("log_every", 1))
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    compiled_cache: dict = {}
    divergence, skips = DivergenceGuard.from_config(cfg), SkipGuard.from_config(cfg)
    step = int(jax.device_get(state.step))
    progress = tqdm(
        total=total_steps, initial=step, desc="train", dynamic_ncols=True, disable=not (cfg.progress and is_primary())
    )
    last_loss = None
    interval_start, interval_steps, interval_data = time.perf_counter(), 0, feed.data_wait_s
    try:
        with mesh_context(mesh, model.rules):
            if preemption.requested() and not preemption.multiprocess:
                raise Preempted(step, ckpt.directory)  # signalled during start-up: nothing new to save
            watchdog.phase("reading the first batches")
            feed.fill(total_steps - step)
            while step < total_steps:
                watchdog.phase("waiting for the next batch (and every process to have one)")
                batch = feed.next()
                if batch is None:
                    print(
                        f"process {jax.process_index()} of {jax.process_count()}: end of the data "
                        f"after step {step} (of {total_steps} planned)",
                        flush=True,
                    )
                    break
                if step % log_every == 0:
                    skips.check(feed)
                inputs = {k: batch[k] for k in BATCH_KEYS if k in batch}
                key = tuple((k, v.shape) for k, v in inputs.items())
                if key not in compiled_cache:
                    watchdog.phase("compiling the train step", allow_s=watchdog.startup_s)
                    t0 = time.perf_counter()
                    compiled_cache[key] = step_fn.lower(state, inputs).compile()
                    compile_s = time.perf_counter() - t0
                    if is_primary():
                        print(
                            f"compiled train step for {dict(key)} in {compile_s:.1f}s: "
                            f"{_describe_memory(compiled_cache[key])}",
                            flush=True,
                        )
                    interval_start += compile_s  # compilation is not step time
                    goodput.compile_s += compile_s
                goodput.first_step()
                profile.before(step + 1)
                watchdog.phase(f"dispatching train step {step + 1}")
                with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
                    state, metrics = compiled_cache[key](state, inputs)
                divergence.record(step + 1, metrics)  # every step's loss, kept on the device until checked
                step += 1
                interval_steps += 1
                progress.update(1)
                watchdog.step_done(step)  # dispatched: its batch arrived and the steps before it ran
                watchdog.phase("reading ahead")
                feed.fill(total_steps - step)  # the step runs asynchronously meanwhile
                interval_start += profile.after(step, metrics)  # stopping the trace is not step time
                stop = preemption.reached(step)  # every process, every step: the agreed stop step
                # Metrics stay on the device except on logging steps, checkpoint steps, the last step and
                # a preemption: fetching them every step would wait for each step before dispatching the next.
                if step % log_every and not stop and not ckpt.due(step) and step != total_steps:
                    continue
                watchdog.phase(f"fetching the metrics of step {step}")
                divergence.check(ckpt.all_steps(), ckpt.directory)  # before any save: see guards.py
                metrics = jax.device_get(metrics)
                elapsed = time.perf_counter() - interval_start
                dt = elapsed / interval_steps  # wall time per step, unhidden reads included
                goodput.train_s += elapsed
                last_loss = loss = float(metrics["train/loss"])
                row = _row(cfg, model, metrics, batch, feed, dt, peak)
                row.update(
                    goodput.row(
                        data_wait_s=feed.data_wait_s,
                        interval_steps=interval_steps,
                        interval_data_s=feed.data_wait_s - interval_data,
                    )
                )
                writer.write(step, row)
                progress.set_postfix(loss=f"{loss:.4f}")
                watchdog.phase(f"saving the checkpoint of step {step}", allow_s=watchdog.timeout_s)
                t0 = time.perf_counter()
                ckpt.save(step, _checkpoint_tree(state), feed, force=stop)
                if stop:
                    ckpt.wait()  # on disk before the exit: the scheduler kills soon
                    goodput.checkpoint_s += time.perf_counter() - t0
                    print(
                        f"process {jax.process_index()} of {jax.process_count()}: preempted "
                        f"({preemption.received or 'preemption notice'}); checkpoint of step {step} "
                        f"written to {ckpt.directory}; exiting with status {PREEMPTED_EXIT_CODE}",
                        flush=True,
                    )
                    raise Preempted(step, ckpt.directory)
                goodput.checkpoint_s += time.perf_counter() - t0
                interval_start, interval_steps, interval_data = time.perf_counter(), 0, feed.data_wait_s
        watchdog.phase("final checks and checkpoint", allow_s=watchdog.timeout_s)
        divergence.check(ckpt.all_steps(), ckpt.directory)
        skips.check(feed, final=True, num_examples=len(source))
        if ckpt.latest_step() != step:
            ckpt.save(step, _checkpoint_tree(state), feed, force=True)
        ckpt.wait()
    finally:
        profile.close()
        progress.close()
        writer.close()
        feed.close()
        ckpt.close()
    watchdog.phase("writing the final model", allow_s=watchdog.startup_s)
    final = finish(state, model, final_dir, export_hf=cfg.export_hf, workdir=workdir)
    return {"finished": True, "final": final, "steps": step, "last_loss": last_loss, "total_steps": total_steps}


def _row(cfg, model: LoadedModel, metrics: dict, batch: dict, loader, step_time: float, peak) -> dict:
    """One metrics row: the step's metrics, its wall time per step, tokens/s, skips and MFU."""
    host = _host_stats(batch)
    flops = train_step_flops(
        model.config,
        tokens=host["tokens"],
        images=host["images"],
        seq_len=host["seq_len"],
        llm_trained=cfg.stage == 2 and not cfg.lora.rank,
    )
    row = {k: float(v) for k, v in metrics.items()}
    row.update(
        {
            "train/step_time": step_time,
            "train/tokens_per_sec": host["tokens"] / step_time,
            "train/skipped": int(sum(loader.skipped.values())),
            "train/mfu": flops / step_time / (peak * jax.device_count()) if peak else None,
        }
    )
    return row


def _host_stats(batch) -> dict:
    seg = batch["segment_ids"]
    tokens = int(jax.device_get(jnp.sum(seg > 0))) if not isinstance(seg, np.ndarray) else int((seg > 0).sum())
    mask = batch.get("image_mask")
    if mask is None:
        images = 0
    else:  # a global array spans other processes' devices: reduce on device, fetch the replicated sum
        images = int(mask.sum()) if isinstance(mask, np.ndarray) else int(jax.device_get(jnp.sum(mask)))
    return {"tokens": tokens, "images": images, "seq_len": int(seg.shape[1])}


def finish(state: TrainState, model: LoadedModel, final_dir: str, *, export_hf: bool, workdir: str) -> str:
    """Write the trained model (LoRA merged) as a llava_jax checkpoint, and HF when asked."""
    # float32 before merging: W + (alpha / r) A B rounded to a bf16 frozen kernel's dtype
    # would lose much of a small adapter update.
    params = jax.tree.map(lambda x: x.astype(jnp.float32), merge_trees(state.params, state.frozen))
    params, config = merge_lora(params, model.config)
    config = config.with_dtype("float32")
    save_native(final_dir, params, config, model.tokenizer)
    if export_hf and jax.process_count() > 1:
        # Each process holds only its shards and the export reads whole tensors: a separate one-process step.
        if is_primary():
            print(
                f"multi-process run: write the HF directory with `llava-jax export {final_dir} "
                f"{os.path.join(workdir, 'hf')}` (one process, any host)"
            )
    elif export_hf:
        write_hf(LoadedModel(config, params, model.tokenizer), os.path.join(workdir, "hf"))
    return final_dir
