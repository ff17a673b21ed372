"""LLaVA-1.5-HD training: the HD config, its model and data settings, and the planner's accounting."""

import numpy as np
import pytest

from llava_jax.convert.loaders import LoadedModel
from llava_jax.presets import HD_PINPOINTS, llava_v15_7b, with_anyres
from llava_jax.train import plan as planning
from llava_jax.train.experiment import load_config
from llava_jax.train.loop import data_config
from llava_jax.train.state import model_config


def test_hd_config_makes_the_7b_an_anyres_model():
    cfg = load_config("configs/finetune_hd_7b.py")
    config = model_config(cfg, llava_v15_7b())
    assert config.anyres == with_anyres(llava_v15_7b(), HD_PINPOINTS).anyres
    assert config.image_grid_pinpoints == ((336, 672), (672, 336), (672, 672))
    assert config.uses_image_newline and config.max_image_tokens == 576 + 48 * 49
    # Without the override the initial model's mode is kept.
    assert model_config(load_config("configs/finetune_7b.py"), llava_v15_7b()).anyres is None


def test_data_settings_follow_the_model():
    class Tok:
        pad_token_id, unk_token_id = 0, 0

    cfg = load_config("configs/finetune_hd_7b.py")
    hd = model_config(cfg, llava_v15_7b())
    d = data_config(cfg, LoadedModel(hd, None, Tok()))
    assert d.image_mode == "anyres" and d.anyres == hd.anyres and d.max_length == 4096
    with pytest.raises(ValueError, match=r"data.image_mode 'pad' but the model's image_aspect_ratio is 'anyres'"):
        data_config(load_config("configs/finetune_7b.py"), LoadedModel(hd, None, Tok()))


def test_plan_counts_tiles_and_long_rows():
    hd_cfg = load_config("configs/finetune_hd_7b.py")
    plain_cfg = load_config("configs/finetune_7b.py")
    hd, plain = (planning.make_plan(c, (1, 8, 1), hbm_gib=80, platform="gpu") for c in (hd_cfg, plain_cfg))
    batch = planning.abstract_batch(hd_cfg, model_config(hd_cfg, llava_v15_7b()))
    assert batch["images"].shape == (128, 1, 5, 336, 336, 3) and batch["image_grids"].shape == (128, 1, 6)
    assert batch["input_ids"].shape == (128, 4096)
    # Five tile slots per image and rows twice as long.
    assert hd.batch == pytest.approx(
        plain.batch + 4 * 128 * 336 * 336 * 3 * 4 / 8 + 4 * 128 * 2048 * 4 / 8 + 128 * 24 / 8, rel=0.01
    )
    assert hd.activation_total > plain.activation_total and hd.fits  # 8 x 80 GiB, cuDNN attention
    with pytest.raises(ValueError, match=r"rows of 2048 tokens cannot hold one high-resolution image \(up to 2928"):
        planning.make_plan(load_config("configs/finetune_hd_7b.py", ["--config.data.max_length=2048"]), (1, 8, 1))


def test_hd_step_loss_runs_on_a_batch_of_tiles():
    """The train step's loss takes the pipeline's tiles + grids (tiny anyres model, one image per row)."""
    import jax

    from llava_jax.model.params import init_params
    from llava_jax.presets import tiny
    from llava_jax.train.step import batch_loss

    config = with_anyres(tiny(), ((28, 56), (56, 56)))
    params = init_params(config, jax.random.PRNGKey(0))
    spec = config.anyres
    n = spec.num_tokens(30, 70)
    ids = np.full((2, 40), 5, np.int32)
    ids[0, 1 : 1 + n] = config.image_token_index
    batch = {
        "input_ids": ids,
        "labels": np.where(ids == config.image_token_index, -100, ids),
        "positions": np.broadcast_to(np.arange(40, dtype=np.int32), (2, 40)),
        "segment_ids": np.ones((2, 40), np.int32),
        "images": np.random.default_rng(0).standard_normal((2, 1, spec.max_tiles, 28, 28, 3)).astype(np.float32),
        "image_grids": np.array([[spec.image_grid(30, 70)], [[0] * 6]], np.int32),
    }
    loss = jax.jit(lambda b: batch_loss(params, {}, b, jax.random.PRNGKey(1), config=config))
    nll, count = loss(batch)
    assert np.isfinite(float(nll)) and int(count) > 0
    # The image's tiles reach the loss: other pixels, another loss.
    other = dict(batch, images=batch["images"] * 0.5)
    assert float(loss(other)[0]) != float(nll)
