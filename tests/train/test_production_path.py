"""The precision path training really uses (bf16 compute, bf16 frozen weights, full remat), on small models.

`llava_jax.train.defaults.stage2()` trains with `model.dtype = bfloat16`,
`model.frozen_dtype = bfloat16` and `model.remat_policy = full`; configs/tiny.py turns
all three off for exact CPU tests. These tests put them back.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llava_jax.model.llava import LlavaModel
from llava_jax.model.params import init_params, merge_trees
from llava_jax.presets import SYNTHETIC_IMAGE_TOKEN, SYNTHETIC_VOCAB, tiny
from llava_jax.train import defaults
from llava_jax.train.experiment import apply_overrides, load_config
from llava_jax.train.partition import leaf_paths, split
from llava_jax.train.state import model_config
from llava_jax.train.step import TrainState, batch_loss, train_step

PRODUCTION = defaults.stage2().model  # bf16 compute, bf16 frozen weights, full remat
PRODUCTION_OVERRIDES = [
    f"--config.model.dtype={PRODUCTION.dtype}",
    f"--config.model.frozen_dtype={PRODUCTION.frozen_dtype}",
    f"--config.model.remat_policy={PRODUCTION.remat_policy}",
]
# bf16 has an 8-bit mantissa: a relative error of 2^-8 per rounding, a few hundred
# roundings deep in the tiny model; the loss agrees to well under 1%.
BF16_LOSS_RTOL = 1e-2
BF16_GRAD_COSINE = 0.99


def _config():
    return tiny(vocab_size=SYNTHETIC_VOCAB, image_token_index=SYNTHETIC_IMAGE_TOKEN, image_size=56)


@pytest.fixture(scope="module")
def params():
    return init_params(_config(), jax.random.PRNGKey(3))


def _sample(config, rng, length: int | None, text: int):
    """One image sample: bos, the image block, `text` supervised tokens; ids/labels padded to `length`."""
    p = config.image_seq_length
    ids = np.concatenate([[1], np.full(p, config.image_token_index), rng.integers(3, 700, text)])
    labels = np.where(np.arange(ids.size) > p, ids, -100)
    pad = 0 if length is None else length - ids.size
    return np.pad(ids, (0, pad)), np.pad(labels, (0, pad), constant_values=-100), ids.size


def _batch(config, rows: int = 2, length: int = 48, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids, labels = zip(*[_sample(config, rng, length, length - 1 - config.image_seq_length)[:2] for _ in range(rows)])
    s = config.vision.image_size
    return {
        "input_ids": jnp.asarray(np.stack(ids), jnp.int32),
        "labels": jnp.asarray(np.stack(labels), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (rows, length)),
        "segment_ids": jnp.ones((rows, length), jnp.int32),
        "images": jnp.asarray(rng.standard_normal((rows, 1, s, s, 3)), jnp.float32),
    }


def _cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_bf16_full_remat_stage2_step_matches_the_float32_step(params):
    """One real `train_step` each way; SGD with rate 1 makes the update the (clipped-free) gradient."""
    batch = _batch(_config())
    results = {}
    for name, overrides in {"float32": [], "production": PRODUCTION_OVERRIDES}.items():
        cfg = load_config("configs/tiny.py:finetune", overrides)
        config = model_config(cfg, _config())
        trainable, frozen = split(params, list(cfg.trainable))
        frozen = jax.tree.map(lambda x, d=cfg.model.frozen_dtype: x.astype(d), frozen)
        tx = optax.sgd(1.0)
        state = TrainState(jnp.zeros((), jnp.int32), trainable, frozen, tx.init(trainable), jax.random.PRNGKey(0))
        step = jax.jit(lambda s, b, c=config, t=tx: train_step(s, b, config=c, optimizer=t, lr_fn=lambda _: 1.0))
        new, metrics = step(state, batch)
        grads = jax.tree.map(lambda old, upd: old - upd, trainable, new.params)
        results[name] = (float(metrics["train/loss"]), grads, config)
    loss32, grads32, config32 = results["float32"]
    loss16, grads16, config16 = results["production"]
    assert (config16.llm.dtype, config16.llm.remat_policy, config32.llm.dtype) == ("bfloat16", "full", "float32")
    assert loss16 == pytest.approx(loss32, rel=BF16_LOSS_RTOL)
    assert loss16 != loss32  # the production step really computed in bf16
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
    for part in ("projector", "llm"):
        assert _cosine(flat(grads16[part]), flat(grads32[part])) > BF16_GRAD_COSINE, part
    for path, g16, g32 in zip(leaf_paths(grads32), jax.tree.leaves(grads16), jax.tree.leaves(grads32)):
        assert _cosine(g16, g32) > 0.95, path


@pytest.mark.parametrize("impl", ["xla", "pallas_gpu"])
def test_packed_rows_give_the_loss_of_separate_rows(params, impl):
    """Two image samples packed in one row (segment ids, restarting positions) vs one padded row each."""
    config = _config().with_attention(impl)
    rng = np.random.default_rng(1)
    length = 64
    samples = [_sample(config, rng, None, n) for n in (9, 21)]
    sizes = [size for _, _, size in samples]
    s = config.vision.image_size
    images = jnp.asarray(rng.standard_normal((2, s, s, 3)), jnp.float32)
    packed_ids = np.concatenate([ids for ids, _, _ in samples] + [np.zeros(length - sum(sizes), int)])
    packed = {
        "input_ids": jnp.asarray(packed_ids[None], jnp.int32),
        "labels": jnp.asarray(
            np.concatenate([lab for _, lab, _ in samples] + [np.full(length - sum(sizes), -100)])[None], jnp.int32
        ),
        "positions": jnp.asarray(
            np.concatenate([np.arange(n) for n in sizes] + [np.zeros(length - sum(sizes), int)])[None], jnp.int32
        ),
        "segment_ids": jnp.asarray(np.repeat([1, 2, 0], [*sizes, length - sum(sizes)])[None], jnp.int32),
        "images": images[None],
    }
    pad = lambda x, n, v=0: np.pad(x, (0, length - n), constant_values=v)
    separate = {
        "input_ids": jnp.asarray(np.stack([pad(ids, n) for ids, _, n in samples]), jnp.int32),
        "labels": jnp.asarray(np.stack([pad(lab, n, -100) for _, lab, n in samples]), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (2, length)),
        "segment_ids": jnp.asarray(np.stack([pad(np.ones(n, int), n) for n in sizes]), jnp.int32),
        "images": images[:, None],
    }
    loss = jax.jit(lambda b: batch_loss(params, {}, b, jax.random.PRNGKey(0), config=config, chunk=16))
    (nll_packed, n_packed), (nll_separate, n_separate) = loss(packed), loss(separate)
    assert int(n_packed) == int(n_separate) == sum(sizes) - 2 * (config.image_seq_length + 1)
    np.testing.assert_allclose(float(nll_packed), float(nll_separate), rtol=2e-6)


@pytest.mark.slow
def test_lora_run_trains_adapters_and_projector_at_their_rates_and_merges_exactly(tmp_path, monkeypatch):
    """A 2-step LoRA `run()` on the production precision path, from a random tiny LLaVA."""
    import llava_jax
    from llava_jax.demo.synthetic import write_synthetic_dataset
    from llava_jax.train import loop

    data = tmp_path / "data"
    write_synthetic_dataset(str(data), num_captions=8, num_qa=16, num_eval=2, image_size=56, seed=0)
    lr, projector_lr = 1e-3, 1e-4
    cfg = defaults.lora(load_config("configs/tiny.py:finetune", PRODUCTION_OVERRIDES))
    overrides = [
        "--config.init.kind=random",
        f"--config.data.json={data}/stage2_instruct.json",
        f"--config.data.image_root={data}/images",
        "--config.lora.rank=4",
        "--config.lora.alpha=8.0",
        f"--config.lora.projector_lr={projector_lr}",
        f"--config.optim.lr={lr}",
        "--config.optim.warmup_ratio=0.0",
        "--config.num_steps=2",
        "--config.batch_size=8",
        "--config.progress=False",
        "--config.checkpoint.async_save=False",
    ]
    cfg = apply_overrides(cfg, overrides)
    seen = {}
    init_state, finish = loop.init_state, loop.finish

    def spy_init(cfg, config, params, *args, **kwargs):
        seen["initial"] = jax.device_get(params)  # adapters included (B = 0)
        return init_state(cfg, config, params, *args, **kwargs)

    def spy_finish(state, model, *args, **kwargs):
        seen["state"], seen["config"] = state, model.config
        return finish(state, model, *args, **kwargs)

    monkeypatch.setattr(loop, "init_state", spy_init)
    monkeypatch.setattr(loop, "finish", spy_finish)
    summary = loop.run(cfg, str(tmp_path / "run"))
    assert summary["steps"] == 2
    state, config, initial = seen["state"], seen["config"], seen["initial"]
    assert (config.llm.dtype, config.llm.remat_policy, config.llm.lora_rank) == ("bfloat16", "full", 4)

    # Only the adapters and the projector train; the base weights ride along in bf16.
    paths = leaf_paths(state.params)
    assert paths and all(p.startswith("projector/") or p.endswith(("lora_a", "lora_b")) for p in paths), paths
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.frozen["llm"]))
    # Per-part peak rates: Adam's first steps move each weight by about the rate (sign of the gradient),
    # at most lr (step 1) + lr / 2 (step 2, cosine) with Adam's ratio up to ~1.4.
    step = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
        state.params["projector"],
        initial["projector"],
    )
    proj = max(jax.tree.leaves(step))
    lora_b = max(float(np.max(np.abs(x))) for p, x in zip(paths, jax.tree.leaves(state.params)) if p.endswith("lora_b"))
    assert 0.9 * projector_lr < proj < 2 * projector_lr, proj
    assert 0.9 * lr < lora_b < 2 * lr, lora_b

    # The final checkpoint has the adapters merged: same logits as the unmerged trained model.
    final = llava_jax.load(str(tmp_path / "run" / "final"))
    assert final.config.llm.lora_rank == 0
    f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
    unmerged = f32(merge_trees(state.params, state.frozen))
    batch = _batch(_config(), seed=4)
    args = (batch["input_ids"], batch["images"])
    want, _ = jax.jit(LlavaModel(config.with_dtype("float32")).apply)({"params": unmerged}, *args)
    plain = jax.jit(LlavaModel(final.config).apply)
    got, _ = plain({"params": f32(final.params)}, *args)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
    before, _ = jax.jit(LlavaModel(config.with_dtype("float32")).apply)({"params": f32(initial)}, *args)
    assert np.abs(np.asarray(got) - np.asarray(before)).max() > 1e-3  # the adapters changed the model
