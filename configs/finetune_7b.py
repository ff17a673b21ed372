"""LLaVA-1.5-7B stage 2 (paper recipe): projector + LLM on the 665K mix, `vicuna_v1`, `pad`, lr 2e-5, batch 128.

Starts from the stage-1 run's `final/` (CLIP + Vicuna + the trained projector).
"""

from llava_jax.train import defaults


def get_config():
    c = defaults.stage2()
    c.init.kind = "llava"
    c.init.path = "runs/pretrain_7b/final"
    c.data.json = "playground/data/llava_v1_5_mix665k.json"
    c.data.image_root = "playground/data"
    c.data.batching = "pad"  # modality-grouped length buckets, as the reference
    c.mesh.fsdp = -1
    c.checkpoint.every_steps = 500
    return c
