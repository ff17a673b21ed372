"""A tiny LLaVA trained on a synthetic caption + QA set generated into the workdir (CPU, minutes).

  llava-jax train --config configs/tiny.py --workdir runs/tiny_pretrain           # stage 1
  llava-jax train --config configs/tiny.py:finetune --workdir runs/tiny_finetune \\
      --config.init.path=runs/tiny_pretrain/final                                 # stage 2
"""

from llava_jax.train import defaults

SYNTHETIC_VOCAB = 832  # the shipped synthetic tokenizer has 770 ids; padded to a multiple of 64
SYNTHETIC_IMAGE_TOKEN = 768


def get_config(stage: str = "pretrain"):
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"configs/tiny.py takes 'pretrain' or 'finetune', not {stage!r}")
    c = defaults.stage1() if stage == "pretrain" else defaults.stage2()
    c.init.kind = "random" if stage == "pretrain" else "llava"
    c.init.preset = "tiny"
    c.init.vocab_size = SYNTHETIC_VOCAB
    c.init.image_token_index = SYNTHETIC_IMAGE_TOKEN
    c.init.image_size = 56
    from llava_jax.data.synthetic import synthetic_tokenizer_path

    c.tokenizer = synthetic_tokenizer_path()
    c.data.synthetic.enabled = True
    c.data.synthetic.kind = "captions" if stage == "pretrain" else "qa"
    c.data.synthetic.num_captions = 400
    c.data.synthetic.num_qa = 400
    c.data.synthetic.num_eval = 50
    c.data.synthetic.image_size = 56
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
    return c
