"""LLaVA-1.5-13B stage 2 (paper recipe): as the 7B instruction tuning, from the 13B stage-1 run."""

from llava_jax.train import defaults


def get_config():
    c = defaults.stage2()
    c.init.kind = "llava"
    c.init.path = "runs/pretrain_13b/final"
    c.data.json = "playground/data/llava_v1_5_mix665k.json"
    c.data.image_root = "playground/data"
    c.data.batching = "pad"
    c.mesh.fsdp = -1
    c.checkpoint.every_steps = 500
    return c
