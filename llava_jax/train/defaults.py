"""Default experiment config (an `ml_collections.ConfigDict`) and the two LLaVA-1.5 stages.

Files in `configs/` start from `stage1()` or `stage2()` and change what differs.
Every field can be overridden on the command line (`--config.optim.lr=2e-5`).
"""

from __future__ import annotations

import ml_collections


def base() -> ml_collections.ConfigDict:
    """Every field the trainer reads, with neutral defaults."""
    c = ml_collections.ConfigDict()
    c.stage = 2
    c.seed = 0
    # Initial weights: 'components' (HF CLIP + HF LLaMA dirs, fresh projector), 'llava' (any
    # directory `llava_jax.load` reads, e.g. a stage-1 run's `final/`), or 'random' (a preset).
    c.init = ml_collections.ConfigDict(
        dict(
            kind="components",
            path="",
            vision_dir="",
            llm_dir="",
            preset="",
            vocab_size=0,
            image_token_index=0,
            image_size=0,
            projector_from="",
        )
    )
    c.tokenizer = ""  # default: the init directory's (or the LLM directory's) tokenizer
    c.model = ml_collections.ConfigDict(
        dict(
            dtype="bfloat16",
            attention_impl="auto",
            remat_policy="full",
            freeze_vision=True,
            frozen_dtype="bfloat16",
            # '' keeps the initial model's image mode; 'anyres' (LLaVA-1.5-HD) tiles images over
            # `image_grid_pinpoints` ((height, width) pairs) merged by `patch_merge_type`.
            image_aspect_ratio="",
            image_grid_pinpoints=[],
            patch_merge_type="spatial_unpad",
        )
    )
    c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=256.0, dropout=0.05, projector_lr=2e-5))
    c.trainable = ["^projector/", "^llm/"]
    c.optim = ml_collections.ConfigDict(
        dict(
            lr=2e-5,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            warmup_ratio=0.03,
            clip_norm=1.0,
        )
    )
    c.data = ml_collections.ConfigDict(
        dict(
            json="",
            image_root="",
            template="vicuna_v1",
            image_mode="pad",
            max_length=2048,
            batching="pad",
            max_images_per_row=4,
            pack_length=0,
            pack_window=512,
            pad_multiple=128,
            group_factor=1,
            num_epochs=1,
            num_workers=2,
            read_threads=4,  # grain reading threads and prefetch buffer (DataConfig)
            read_buffer=16,
            on_error="skip",
            # Image paths leading outside image_root (absolute, '..', symlinks) are skipped unless allowed.
            allow_outside_root=False,
            max_image_mb=256.0,  # image files above it are skipped (image_too_large)
            # Stop when more than this fraction of samples is skipped, judged once skip_check_after
            # samples were read (and at the end); 1.0 never stops. A run where no sample survives always stops.
            max_skip_fraction=0.05,
            skip_check_after=1000,
        )
    )
    c.batch_size = 128
    c.micro_batches = 1
    c.num_steps = 0  # 0: one pass over the data (num_epochs), estimated from the source
    # preset: '' (use the sizes), 'fsdp', 'fsdp_tensor' or 'data' (llava_jax.sharding.MESH_PRESETS).
    # data/fsdp/tensor are the sizes within one TPU slice; dcn_data x dcn_fsdp slices (multislice, over the
    # data-center network) multiply data and fsdp; dcn_data=0: the number of slices (1 without slices).
    c.mesh = ml_collections.ConfigDict(
        dict(preset="", data=1, fsdp=-1, tensor=1, dcn_data=0, dcn_fsdp=1, num_devices=0)  # num_devices 0: all
    )
    # directory: '' = WORKDIR/checkpoints; any path orbax accepts, e.g. gs://bucket/run/checkpoints.
    # atomicity: 'auto' (commit_file on gs:// and FUSE mounts such as gcsfuse, else rename), 'rename' or
    # 'commit_file' (llava_jax.convert.storage).
    c.checkpoint = ml_collections.ConfigDict(
        dict(every_steps=500, keep=3, async_save=True, directory="", atomicity="auto")
    )
    c.loss_chunk = 512
    c.peak_tflops = 0.0  # per-device peak for MFU; 0 = known table for the device
    c.export_hf = True  # also write WORKDIR/hf (HF transformers LLaVA) at the end
    c.progress = True
    # Metrics are fetched from the devices (and written, and checked for divergence) every
    # `log_every` steps and on checkpoint steps; fetching every step stalls the dispatch.
    c.log_every = 10
    # Stop when the loss stays above spike_factor x its running median (over spike_window steps, and by
    # more than spike_min_delta) for spike_steps steps in a row; spike_factor 0 turns it off. A non-finite
    # loss or gradient norm always stops. See llava_jax/train/guards.py.
    c.guard = ml_collections.ConfigDict(dict(spike_factor=10.0, spike_steps=3, spike_window=100, spike_min_delta=1.0))
    # A process in which no step finishes for timeout_s seconds (startup_s before the first step: model
    # loading, restore, first compilation) dumps all thread stacks and exits 77; 0 turns it off.
    # Compilations and checkpoint saves get their own allowance. See llava_jax/runtime/watchdog.py.
    c.watchdog = ml_collections.ConfigDict(dict(timeout_s=900.0, startup_s=3600.0))
    # steps='a:b' writes a jax.profiler trace of steps a..b (1-based) to WORKDIR/profile/.
    c.profile = ml_collections.ConfigDict(dict(steps=""))
    return c


def stage1() -> ml_collections.ConfigDict:
    """LLaVA-1.5 pretraining: projector only, LCS-558K, `plain`, `square`, lr 1e-3, batch 256."""
    c = base()
    c.stage = 1
    c.trainable = ["^projector/"]
    c.optim.lr = 1e-3
    c.batch_size = 256
    c.data.template = "plain"
    c.data.image_mode = "square"
    return c


def stage2() -> ml_collections.ConfigDict:
    """LLaVA-1.5 instruction tuning: projector + LLM, 665K mix, `vicuna_v1`, `pad`, lr 2e-5, batch 128."""
    c = base()
    c.stage = 2
    c.trainable = ["^projector/", "^llm/"]
    c.optim.lr = 2e-5
    c.batch_size = 128
    c.data.template = "vicuna_v1"
    c.data.image_mode = "pad"
    c.init.kind = "llava"
    return c


def lora(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Stage 2 with LoRA (r 128, alpha 256, dropout 0.05) on all LLM projections, lr 2e-4, projector 2e-5."""
    c.lora.rank = 128
    c.lora.alpha = 256.0
    c.lora.dropout = 0.05
    c.lora.projector_lr = 2e-5
    c.optim.lr = 2e-4
    c.trainable = ["^projector/", "lora_[ab]$"]
    return c
