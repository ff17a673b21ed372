"""`llava-jax train`: one LLaVA-1.5 stage from an experiment config, sharded, checkpointed, resumable.

Resume order: this workdir's newest checkpoint, else the configured initial
weights. A finished run leaves `WORKDIR/final/` (a llava_jax checkpoint with
LoRA merged) and, with `export_hf`, `WORKDIR/hf/`; re-running a finished
workdir does nothing.
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
from llava_jax.sharding import DEFAULT_RULES, MeshConfig, batch_sharding, make_mesh, mesh_context, tree_shardings
from llava_jax.train.checkpoint import Checkpointer
from llava_jax.train.flops import peak_flops, train_step_flops
from llava_jax.train.guards import DivergenceGuard, SkipGuard, TrainingDiverged
from llava_jax.train.metrics import MetricsWriter
from llava_jax.train.partition import split
from llava_jax.train.state import init_state, model_config, optimizer_for
from llava_jax.train.step import BATCH_KEYS, TrainState, jit_train_step
from llava_jax.train.validate import check_source, validate_config

log = logging.getLogger(__name__)
FINAL_DIR = "final"
__all__ = ["TrainingDiverged", "run"]  # TrainingDiverged lives in guards; importable from here as before


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
    """The (data, fsdp, tensor) mesh of `cfg.mesh`: a named preset or explicit sizes."""
    from llava_jax.sharding import MESH_PRESETS

    if cfg.mesh.get("preset"):
        if cfg.mesh.preset not in MESH_PRESETS:
            raise ValueError(f"mesh.preset {cfg.mesh.preset!r} not in {sorted(MESH_PRESETS)}")
        mesh_cfg = MESH_PRESETS[cfg.mesh.preset]
    else:
        mesh_cfg = MeshConfig(**{k: cfg.mesh[k] for k in ("data", "fsdp", "tensor")})
    devices = jax.devices()[: cfg.mesh.num_devices] if cfg.mesh.get("num_devices") else None
    return make_mesh(mesh_cfg, devices)


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
    `TrainingDiverged` / `TooManySkipped` when a guard stops the run (never leaving `final/`).
    """
    validate_config(cfg)
    workdir = os.path.abspath(workdir)
    final_dir = os.path.join(workdir, FINAL_DIR)
    if os.path.exists(os.path.join(final_dir, "config.json")):
        if is_primary():
            print(f"{workdir}: already finished ({final_dir} exists); nothing to do")
        return {"finished": True, "final": final_dir, "resumed": True, "steps": None}
    from llava_jax.data.pipeline import create_loader
    from llava_jax.data.sources import open_source

    source = open_source(
        cfg.data.json, cfg.data.image_root, allow_outside_root=cfg.data.get("allow_outside_root", False)
    )
    check_source(cfg, source)
    os.makedirs(workdir, exist_ok=True)
    if is_primary():
        with open(os.path.join(workdir, "experiment.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))
    mesh = build_mesh(cfg)
    model = initial_model(cfg, mesh)
    data_cfg = data_config(cfg, model)
    total_steps = estimate_steps(cfg, source, data_cfg, model.tokenizer)
    optimizer, lr_fn = optimizer_for(cfg, total_steps, split(model.params, list(cfg.trainable))[0])
    state = init_state(cfg, model.config, model.params, optimizer, mesh, model.rules)
    model.params = None  # the state holds the weights now
    loader = create_loader(data_cfg, source, model.tokenizer, mesh=mesh, rules=model.rules)
    ckpt = Checkpointer(
        cfg.checkpoint.get("directory") or os.path.join(workdir, "checkpoints"),
        every_steps=cfg.checkpoint.every_steps,
        keep=cfg.checkpoint.keep,
        async_save=cfg.checkpoint.async_save,
    )
    start = ckpt.latest_step()
    if start is not None:
        state = state.replace(**ckpt.restore(start, _checkpoint_tree(state), loader))
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
    writer = MetricsWriter(workdir, enabled=is_primary())
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
    interval_start, interval_steps = time.time(), 0
    try:
        with mesh_context(mesh, model.rules):
            while step < total_steps:
                try:
                    batch = next(loader)
                except StopIteration:
                    break
                if step % log_every == 0:
                    skips.check(loader)
                inputs = {k: batch[k] for k in BATCH_KEYS if k in batch}
                key = tuple((k, v.shape) for k, v in inputs.items())
                if key not in compiled_cache:
                    t0 = time.time()
                    compiled_cache[key] = step_fn.lower(state, inputs).compile()
                    if is_primary():
                        print(
                            f"compiled train step for {dict(key)} in {time.time() - t0:.1f}s: "
                            f"{_describe_memory(compiled_cache[key])}",
                            flush=True,
                        )
                    interval_start += time.time() - t0  # compilation is not step time
                state, metrics = compiled_cache[key](state, inputs)
                divergence.record(step + 1, metrics)  # every step's loss, kept on the device until checked
                if step + 1 < total_steps:
                    loader.read_ahead()  # the step runs asynchronously meanwhile
                step += 1
                interval_steps += 1
                progress.update(1)
                # Metrics stay on the device except on logging steps, checkpoint steps and the last
                # step: fetching them every step would wait for each step before dispatching the next.
                if step % log_every and not ckpt.due(step) and step != total_steps:
                    continue
                divergence.check(ckpt.all_steps(), ckpt.directory)  # before any save: see guards.py
                metrics = jax.device_get(metrics)
                dt = (time.time() - interval_start) / interval_steps  # wall time per step, unhidden reads included
                interval_start, interval_steps = time.time(), 0
                last_loss = loss = float(metrics["train/loss"])
                writer.write(step, _row(cfg, model, metrics, batch, loader, dt, peak))
                ckpt.save(step, _checkpoint_tree(state), loader)
                progress.set_postfix(loss=f"{loss:.4f}")
        divergence.check(ckpt.all_steps(), ckpt.directory)
        skips.check(loader, final=True, num_examples=len(source))
        if ckpt.latest_step() != step:
            ckpt.save(step, _checkpoint_tree(state), loader, force=True)
        ckpt.wait()
    finally:
        progress.close()
        writer.close()
        loader.close()
        ckpt.close()
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
