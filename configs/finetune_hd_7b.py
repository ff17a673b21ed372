"""LLaVA-1.5-HD-7B stage 2: instruction tuning at high resolution from the LLaVA-1.5 stage-1 projector.

As the paper's LLaVA-1.5-HD: stage 1 stays at 336 px (`configs/pretrain_7b.py`); stage 2 splits each
image into 336-px tiles (grids up to 2x2, `presets.HD_PINPOINTS`) plus a global view, merges the tile
features back into one map (padding removed, a learned newline after each row: LLaVA-NeXT's
`spatial_unpad`; the newline starts fresh) and trains the projector, the newline and the LLM on the
665K mix. An image becomes up to 2928 tokens, so rows are Vicuna's full 4096-token context.

Start from the released stage-1 projector instead of your own run with
`--config.init.kind=components --config.init.vision_dir=CLIP --config.init.llm_dir=VICUNA
--config.init.projector_from=llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5`.
See docs/hd.md.
"""

from llava_jax.presets import HD_PINPOINTS
from llava_jax.train import defaults


def get_config():
    c = defaults.stage2()
    c.init.kind = "llava"
    c.init.path = "runs/pretrain_7b/final"
    c.model.image_aspect_ratio = "anyres"
    c.model.image_grid_pinpoints = [list(p) for p in HD_PINPOINTS]
    c.model.patch_merge_type = "spatial_unpad"
    c.data.image_mode = "anyres"
    c.data.json = "playground/data/llava_v1_5_mix665k.json"
    c.data.image_root = "playground/data"
    c.data.max_length = 4096
    c.data.batching = "pad"  # modality-grouped length buckets, as the reference
    c.mesh.fsdp = -1
    c.checkpoint.every_steps = 500
    return c
