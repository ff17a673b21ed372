"""LLaVA-1.5-13B stage 1 (paper recipe): as the 7B pretraining, with Vicuna-13B v1.5."""

from llava_jax.train import defaults


def get_config():
    c = defaults.stage1()
    c.init.kind = "components"
    c.init.vision_dir = "checkpoints/clip-vit-large-patch14-336"
    c.init.llm_dir = "checkpoints/vicuna-13b-v1.5"
    c.data.json = "playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
    c.data.image_root = "playground/data/LLaVA-Pretrain/images"
    c.mesh.fsdp = -1
    c.checkpoint.every_steps = 500
    return c
