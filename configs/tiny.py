"""A tiny LLaVA trained on the synthetic caption + QA set (CPU, minutes).

  llava-jax data synthetic runs/tiny_data --num-captions 400 --num-qa 400 --num-eval 50
  llava-jax train --config configs/tiny.py --workdir runs/tiny_pretrain           # stage 1
  llava-jax train --config configs/tiny.py:finetune --workdir runs/tiny_finetune \\
      --config.init.path=runs/tiny_pretrain/final                                 # stage 2

The data paths default to that `runs/tiny_data` folder (relative to where you run);
point elsewhere with `--config.data.json=... --config.data.image_root=...`.
"""

from llava_jax.demo.synthetic import synthetic_tokenizer_path
from llava_jax.presets import SYNTHETIC_IMAGE_TOKEN, SYNTHETIC_VOCAB
from llava_jax.train import defaults

DATA_DIR = "runs/tiny_data"


def get_config(stage: str = "pretrain"):
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"configs/tiny.py takes 'pretrain' or 'finetune', not {stage!r}")
    c = defaults.stage1() if stage == "pretrain" else defaults.stage2()
    c.init.kind = "random" if stage == "pretrain" else "llava"
    c.init.preset = "tiny"
    c.init.vocab_size = SYNTHETIC_VOCAB
    c.init.image_token_index = SYNTHETIC_IMAGE_TOKEN
    c.init.image_size = 56
    c.tokenizer = synthetic_tokenizer_path()
    c.data.json = f"{DATA_DIR}/{'stage1_captions' if stage == 'pretrain' else 'stage2_instruct'}.json"
    c.data.image_root = f"{DATA_DIR}/images"
    c.data.max_length = 256
    c.data.pad_multiple = 256  # one shape: one compilation
    c.data.num_epochs = 0  # repeat; the run length is num_steps
    c.data.num_workers = 0
    c.batch_size = 16
    c.num_steps = 40
    c.optim.lr = 1e-3 if stage == "pretrain" else 5e-4
    c.model.dtype = "float32"
    c.model.frozen_dtype = "float32"
    c.model.remat_policy = "none"
    c.checkpoint.every_steps = 10
    c.export_hf = False
    c.log_every = 1
    return c
