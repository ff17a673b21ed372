"""The embedded main job, `llava-jax demo`: a small LLaVA trained end to end on a synthetic task.

  synthetic/   the synthetic shapes task in LLaVA's data formats, its tokenizer and scorer
  config.py    the experiment configs of the stages (what `llava-jax demo` reads)
  towers.py    stages 0a/0b: the stand-ins for CLIP and Vicuna pretraining
  report.py    held-out evaluation, loss curves, the closing chat, results.json
  run.py       the steps in order, each reused when its output exists

The demo model's shape is the `demo` preset (`llava_jax.presets.demo`).
"""
