"""LLaVA-1.5-7B stage 2 with LoRA (r 128, alpha 256, dropout 0.05) on all LLM projections.

lr 2e-4 for the adapters, 2e-5 for the projector; the final checkpoint has the
adapters merged into plain weights.
"""

from llava_jax.train import defaults


def get_config():
    c = defaults.lora(defaults.stage2())
    c.init.kind = "llava"
    c.init.path = "runs/pretrain_7b/final"
    c.data.json = "playground/data/llava_v1_5_mix665k.json"
    c.data.image_root = "playground/data"
    c.data.batching = "pad"
    c.mesh.fsdp = -1
    c.checkpoint.every_steps = 500
    return c
