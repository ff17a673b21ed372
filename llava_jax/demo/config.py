"""The `llava-jax demo` stages: a small LLaVA trained end to end on the synthetic shapes task (CPU, minutes).

  get_config("stage0a")  tower pretraining (not LLaVA; stands in for CLIP): the vision tower as a
                         scene classifier (colour and kind per slot, count) on the stage-1 images
  get_config("stage0b")  LLM pretraining (not LLaVA; stands in for Vicuna): projector + LLM on the
                         captions with their images and the stage-2 conversations as text only,
                         tower frozen; the projector is then re-initialised
  get_config("stage1")   LLaVA stage 1: projector only, captions, `plain`, `square`
  get_config("stage2")   LLaVA stage 2: projector + LLM, QA, `vicuna_v1`, `pad`
  get_config("hd")       `llava-jax demo --hd`: the high-resolution data (`synthetic`: 168-px
                         images, shapes a third of the size) and the grid (`pinpoints`)
  get_config("stage2hd") LLaVA-1.5-HD stage 2: as stage 2, images as a 3x3 grid of 56-px tiles +
                         a global view (`anyres`), from the same stage-1 model

Append `_quick` (`stage1_quick`) for the few-step variant of the test suite.
Stages 0b-2 are `llava-jax train` configs; `llava-jax demo` generates the data
(`DATA`) and fills in the paths (`init.path`, `data.json`, `data.image_root`),
e.g. stage 2 by hand after a demo run:

  llava-jax train --config configs/demo.py:stage2 --workdir runs/stage2 \\
      --config.init.path=workdir_demo/stage1/final \\
      --config.data.json=workdir_demo/data/stage2_instruct.json --config.data.image_root=workdir_demo/data/images

This file is the one `llava-jax demo` reads (`llava_jax/demo/config.py`);
`configs/demo.py` re-exports it as a starting point to edit (`--config`).
"""

import ml_collections

from llava_jax.train import defaults

# One dataset for all stages (the same arguments, so it is generated once and reused).
DATA = {"num_captions": 4000, "num_qa": 20000, "num_eval": 500, "image_size": 56, "seed": 0}
QUICK_DATA = {"num_captions": 64, "num_qa": 64, "num_eval": 20, "image_size": 56, "seed": 0}
# `--hd`: scenes drawn at 3x the tower's 56 px with shapes a third of the size, so a shape is as many
# pixels wide as in the plain demo inside a 56-px tile (every slot falls inside one tile of the 3x3
# grid) and a blob of a few pixels in the image downsampled to 56 px, all a non-HD model sees.
HD_DATA = {**DATA, "image_size": 168, "shape_scale": 1 / 3}
QUICK_HD_DATA = {**QUICK_DATA, "image_size": 168, "shape_scale": 1 / 3}
HD_PINPOINTS = ((168, 168),)
STAGES = ("stage0a", "stage0b", "stage1", "stage2", "stage2hd", "hd")
# Which file of the synthetic dataset each training stage reads (`synthetic_dataset_paths`); stage 0b
# reads a mix the demo writes from both (captions with images, conversations as text).
STAGE_DATA = {"stage0b": "language", "stage1": "captions", "stage2": "qa", "stage2hd": "qa"}


def _tower(quick: bool) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.preset = "demo"
    c.seed = 0
    c.num_images = QUICK_DATA["num_captions"] if quick else DATA["num_captions"]
    c.steps = 3 if quick else 600
    c.batch_size = 16 if quick else 128
    c.lr = 3e-3
    c.llm_init_scale = 4.0  # the random LLM written for stage 0b: matrices at std 0.08 (demo_towers.scale_matrices)
    c.synthetic = ml_collections.ConfigDict(QUICK_DATA if quick else DATA)
    return c


def _common(c, quick: bool):
    from llava_jax.demo.synthetic import synthetic_tokenizer_path
    from llava_jax.presets import SYNTHETIC_IMAGE_TOKEN, SYNTHETIC_VOCAB

    c.init.preset = "demo"
    c.init.vocab_size = SYNTHETIC_VOCAB
    c.init.image_token_index = SYNTHETIC_IMAGE_TOKEN
    c.tokenizer = synthetic_tokenizer_path()
    c.data.batching = "pack"
    c.data.num_epochs = 0  # repeat; the run length is num_steps
    c.data.num_workers = 0
    c.data.pack_window = 256
    c.model.dtype = "float32"
    c.model.frozen_dtype = "float32"
    c.model.remat_policy = "none"
    c.model.attention_impl = "xla"
    c.optim.warmup_ratio = 0.05
    c.checkpoint.every_steps = 100
    c.checkpoint.keep = 1
    c.loss_chunk = 256
    c.batch_size = 16
    c.log_every = 1  # every step's loss goes to the loss curves (as when the demo's timings were measured)
    return c


def get_config(arg: str = "stage2"):
    stage, _, variant = arg.partition("_")
    if stage not in STAGES or variant not in ("", "quick"):
        raise ValueError(f"the demo config takes one of {STAGES}, optionally with '_quick', not {arg!r}")
    quick = variant == "quick"
    if stage == "stage0a":
        return _tower(quick)
    if stage == "hd":
        c = ml_collections.ConfigDict()
        c.synthetic = ml_collections.ConfigDict(QUICK_HD_DATA if quick else HD_DATA)
        c.pinpoints = [list(p) for p in HD_PINPOINTS]
        return c
    if stage == "stage1":
        c = _common(defaults.stage1(), quick)
        c.data.max_length = 160  # rows of 4 captions (~36 tokens each with 16 image tokens)
        c.data.max_images_per_row = 4
        c.init.kind = "llava"
        c.optim.lr = 1e-3
        c.num_steps = 100
    else:
        c = _common(defaults.stage2(), quick)
        c.data.max_length = 256  # rows of 2-3 conversations (~100 tokens each)
        c.data.max_images_per_row = 3
        c.init.kind = "llava"
        c.optim.lr = 3e-3
        c.num_steps = 2200  # binding words to image tokens takes thousands of steps (bench/RESULTS.md)
        if stage == "stage0b":
            c.data.max_images_per_row = 4
            c.model.freeze_vision = True
            c.num_steps = 250
        if stage == "stage2hd":
            c.model.image_aspect_ratio = "anyres"
            c.model.image_grid_pinpoints = [list(p) for p in HD_PINPOINTS]
            c.model.patch_merge_type = "spatial_unpad"
            c.data.image_mode = "anyres"
            c.data.max_length = 384  # an image is 16 + 12 x 13 = 172 tokens: one or two conversations a row
            c.data.max_images_per_row = 2
    if quick:
        c.batch_size = 8
        c.num_steps = 3
        c.checkpoint.every_steps = 2
    return c
