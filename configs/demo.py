"""The `llava-jax demo` stages: a small LLaVA trained end to end on the synthetic shapes task (CPU, minutes).

  get_config("stage0a")  tower pretraining (not LLaVA; stands in for CLIP): the vision tower as a
                         scene classifier (colour and kind per slot, count) on the stage-1 images
  get_config("stage0b")  LLM pretraining (not LLaVA; stands in for Vicuna): projector + LLM on the
                         captions with their images and the stage-2 conversations as text only,
                         tower frozen; the projector is then re-initialised
  get_config("stage1")   LLaVA stage 1: projector only, captions, `plain`, `square`
  get_config("stage2")   LLaVA stage 2: projector + LLM, QA, `vicuna_v1`, `pad`

Append `_quick` (`stage1_quick`) for the few-step variant of the test suite.
Stages 0b-2 are `llava-jax train` configs; `llava-jax demo` fills in the paths
(`init.path`, `data.synthetic.directory`, stage 0b's `data.json`), e.g. stage 2
by hand after a demo run:

  llava-jax train --config configs/demo.py:stage2 --workdir runs/stage2 \\
      --config.init.path=workdir_demo/stage1/final --config.data.synthetic.directory=workdir_demo/data
"""

import ml_collections

from llava_jax.train import defaults

# One dataset for all stages (the same arguments, so it is generated once and reused).
DATA = {"num_captions": 4000, "num_qa": 20000, "num_eval": 500, "image_size": 56, "seed": 0}
QUICK_DATA = {"num_captions": 64, "num_qa": 64, "num_eval": 20, "image_size": 56, "seed": 0}
STAGES = ("stage0a", "stage0b", "stage1", "stage2")


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
    from llava_jax.data.synthetic import synthetic_tokenizer_path
    from llava_jax.demo_preset import SYNTHETIC_IMAGE_TOKEN, SYNTHETIC_VOCAB, register

    register()  # the "demo" preset, for `llava-jax train --config configs/demo.py:...`
    c.init.preset = "demo"
    c.init.vocab_size = SYNTHETIC_VOCAB
    c.init.image_token_index = SYNTHETIC_IMAGE_TOKEN
    c.tokenizer = synthetic_tokenizer_path()
    c.data.synthetic.enabled = True
    for k, v in (QUICK_DATA if quick else DATA).items():
        c.data.synthetic[k] = v
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
    return c


def get_config(arg: str = "stage2"):
    stage, _, variant = arg.partition("_")
    if stage not in STAGES or variant not in ("", "quick"):
        raise ValueError(f"configs/demo.py takes one of {STAGES}, optionally with '_quick', not {arg!r}")
    quick = variant == "quick"
    if stage == "stage0a":
        return _tower(quick)
    if stage == "stage1":
        c = _common(defaults.stage1(), quick)
        c.data.synthetic.kind = "captions"
        c.data.max_length = 160  # rows of 4 captions (~36 tokens each with 16 image tokens)
        c.data.max_images_per_row = 4
        c.init.kind = "llava"
        c.optim.lr = 1e-3
        c.num_steps = 100
    else:
        c = _common(defaults.stage2(), quick)
        c.data.synthetic.kind = "qa"
        c.data.max_length = 256  # rows of 2-3 conversations (~100 tokens each)
        c.data.max_images_per_row = 3
        c.init.kind = "llava"
        c.optim.lr = 3e-3
        c.num_steps = 2200  # binding words to image tokens takes thousands of steps (bench/RESULTS.md)
        if stage == "stage0b":
            c.data.synthetic.enabled = False  # data.json: captions + text-only conversations
            c.data.max_images_per_row = 4
            c.model.freeze_vision = True
            c.num_steps = 250
    if quick:
        c.batch_size = 8
        c.num_steps = 3
        c.checkpoint.every_steps = 2
    return c
