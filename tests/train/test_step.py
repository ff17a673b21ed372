"""The train step: gradient parity with PyTorch LLaVA, micro-batch equivalence, what changes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llava_jax import load
from llava_jax.model.inputs import images_per_row
from llava_jax.model.params import merge_trees
from llava_jax.train.optim import OptimConfig, make_optimizer
from llava_jax.train.partition import split
from llava_jax.train.step import TrainState, batch_loss, train_step
from tests.hf_fixtures import hf_llava, random_inputs, save


@pytest.fixture(scope="module")
def hf_and_jax(tmp_path_factory):
    hf = hf_llava(seed=21)
    return hf, load(save(hf, str(tmp_path_factory.mktemp("hf"))))


def _batch(hf, batch=4, length=16, seed=0):
    ids, pixels, _ = random_inputs(hf.config, batch=batch, length=length, images_per_row=(1,) * batch, seed=seed)
    labels = ids.copy()
    labels[ids == hf.config.image_token_index] = -100
    labels[:, :3] = -100
    return ids, pixels, labels


def _jax_batch(model, ids, pixels, labels):
    return {
        "input_ids": jnp.asarray(ids, jnp.int32),
        "labels": jnp.asarray(labels, jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape),
        "segment_ids": jnp.ones(ids.shape, jnp.int32),
        "images": jnp.asarray(images_per_row(ids, pixels, model.config)),
    }


def test_loss_and_gradients_match_pytorch(hf_and_jax, torch_cpu):
    hf, model = hf_and_jax
    ids, pixels, labels = _batch(hf)
    hf.zero_grad()
    out = hf(input_ids=torch_cpu.tensor(ids), pixel_values=torch_cpu.tensor(pixels), labels=torch_cpu.tensor(labels))
    out.loss.backward()
    trainable, frozen = split(model.params, ["^projector/", "^llm/"])
    batch = _jax_batch(model, ids, pixels, labels)

    def loss(t):
        nll, n = batch_loss(t, frozen, batch, jax.random.PRNGKey(0), config=model.config, chunk=5)
        return nll / n

    value, grads = jax.value_and_grad(loss)(trainable)
    np.testing.assert_allclose(float(value), out.loss.item(), rtol=1e-5)

    def check(ours, theirs):
        ref = theirs.grad.numpy()
        np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())

    check(grads["projector"]["linear_1"]["kernel"].T, hf.model.multi_modal_projector.linear_1.weight)
    check(grads["projector"]["linear_2"]["bias"], hf.model.multi_modal_projector.linear_2.bias)
    layer = hf.model.language_model.layers[1]
    q = grads["llm"]["layers"]["self_attn"]["q_proj"]["kernel"][1]
    check(q.reshape(q.shape[0], -1).T, layer.self_attn.q_proj.weight)
    check(grads["llm"]["layers"]["mlp"]["down_proj"]["kernel"][1].T, layer.mlp.down_proj.weight)
    check(grads["llm"]["layers"]["post_attention_layernorm"]["scale"][1], layer.post_attention_layernorm.weight)


def _state(model, patterns, tx):
    trainable, frozen = split(model.params, patterns)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=trainable,
        frozen=frozen,
        opt_state=tx.init(trainable),
        rng=jax.random.PRNGKey(0),
    )


@pytest.mark.slow
def test_micro_batches_equal_the_large_batch(hf_and_jax):
    hf, model = hf_and_jax
    ids, pixels, labels = _batch(hf, batch=4, seed=1)
    labels[1, 5:] = -100  # unequal supervised counts per row: normalisation must be global
    batch = _jax_batch(model, ids, pixels, labels)
    patterns = ["^projector/", "^llm/"]
    # Adam's eps at 1 makes the first update lr * g / (|g| + 1): linear in the gradient, so the parameters
    # show the gradients' agreement (at eps 1e-8 an element with g ~ 0 moves by up to lr on rounding alone).
    tx, lr = make_optimizer(OptimConfig(lr=1e-3, warmup_ratio=0.0, eps=1.0), 10, split(model.params, patterns)[0])
    outs = []
    for micro in (1, 4):  # 4: one row each, so the micro-batches hold unequal supervised counts
        step = jax.jit(functools.partial(train_step, config=model.config, optimizer=tx, lr_fn=lr, micro_batches=micro))
        outs.append(step(_state(model, patterns, tx), batch))
    for state, metrics in outs[1:]:
        np.testing.assert_allclose(metrics["train/loss"], outs[0][1]["train/loss"], rtol=1e-6)
        np.testing.assert_allclose(metrics["train/grad_norm"], outs[0][1]["train/grad_norm"], rtol=1e-5)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(outs[0][0].params)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "patterns, changed", [(["^projector/"], {"projector"}), (["^projector/", "^llm/"], {"projector", "llm"})]
)
def test_only_trainable_parameters_change(hf_and_jax, patterns, changed):
    hf, model = hf_and_jax
    batch = _jax_batch(model, *_batch(hf, seed=2))
    tx, lr = make_optimizer(OptimConfig(lr=1e-2, warmup_ratio=0.0), 10, split(model.params, patterns)[0])
    state = _state(model, patterns, tx)
    # No optimizer state exists for frozen parts.
    assert {k for k in state.opt_state[1][0].mu} == changed
    new, _ = jax.jit(functools.partial(train_step, config=model.config, optimizer=tx, lr_fn=lr))(state, batch)
    before, after = merge_trees(state.params, state.frozen), merge_trees(new.params, new.frozen)
    for part in ("vision", "projector", "llm"):
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[part]), jax.tree.leaves(after[part])))
        assert same == (part not in changed), part


def _random_batch(config, rows: int, length: int, seed: int) -> dict:
    """A training batch for `config` (one image per row at the front, padding at the end)."""
    rng = np.random.default_rng(seed)
    n_img = config.image_seq_length
    ids = rng.integers(3, config.image_token_index, (rows, length)).astype(np.int32)
    ids[:, 0] = 1
    ids[:, 1 : 1 + n_img] = config.image_token_index
    labels = ids.copy()
    labels[:, : 1 + n_img + 4] = -100  # image and prompt unsupervised
    real = rng.integers(length // 2, length + 1, rows)
    segment_ids = (np.arange(length)[None] < real[:, None]).astype(np.int32)
    labels[segment_ids == 0] = -100
    size = config.vision.image_size
    return {
        "input_ids": ids,
        "labels": labels,
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), ids.shape).copy(),
        "segment_ids": segment_ids,
        "images": rng.standard_normal((rows, 1, size, size, 3)).astype(np.float32),
    }


def test_same_losses_and_parameters_on_every_mesh():
    """The sharded step (the trainer's `init_state` + `jit_train_step`) on 8 devices, 2 on each of data, fsdp
    and tensor, equals one device."""
    from llava_jax.model.params import init_params
    from llava_jax.presets import tiny
    from llava_jax.sharding import batch_sharding, make_mesh, mesh_context
    from llava_jax.train.experiment import load_config
    from llava_jax.train.state import init_state, model_config, optimizer_for
    from llava_jax.train.step import jit_train_step

    assert jax.device_count() == 8
    # Projector + LLM trained; Adam's eps at 1 makes updates linear in the gradients (see the micro-batch test).
    cfg = load_config("configs/tiny.py:finetune", ["--config.optim.warmup_ratio=0.0", "--config.optim.eps=1.0"])
    config = model_config(cfg, tiny())
    params = jax.device_get(init_params(config, jax.random.PRNGKey(3)))  # host copies: every state is fresh
    optimizer, lr_fn = optimizer_for(cfg, 10, split(params, list(cfg.trainable))[0])
    batches = [_random_batch(config, rows=8, length=48, seed=s) for s in range(3)]
    results = {}
    for name, mesh in {
        "single": make_mesh((1, 1, 1), jax.devices()[:1]),
        "data x fsdp x tensor": make_mesh((2, 2, 2)),
    }.items():
        state = init_state(cfg, config, params, optimizer, mesh)
        step = jit_train_step(
            config=config,
            optimizer=optimizer,
            lr_fn=lr_fn,
            micro_batches=1,
            freeze_vision=cfg.model.freeze_vision,
            loss_chunk=cfg.loss_chunk,
            state_shardings=jax.tree.map(lambda x: x.sharding, state),
            batch_sharding=batch_sharding(mesh),
        )
        losses = []
        with mesh_context(mesh):
            for batch in batches:
                state, metrics = step(state, jax.device_put(batch, batch_sharding(mesh)))
                losses.append(float(metrics["train/loss"]))
        results[name] = losses, jax.device_get(state.params)
    want_losses, want_params = results.pop("single")
    assert want_losses[-1] < want_losses[0]  # the steps do train
    for name, (losses, params) in results.items():
        np.testing.assert_allclose(losses, want_losses, rtol=1e-5, err_msg=name)
        for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(want_params)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8, err_msg=f"{name} {jax.tree_util.keystr(path)}")
