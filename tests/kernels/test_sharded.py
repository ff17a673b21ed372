"""Kernels under a mesh: run per shard inside shard_map, equal to the unsharded reference, no gather of q/k/v.

8 CPU devices as a (data 2, fsdp 2, tensor 2) mesh; Pallas kernels in interpret mode.
"""

import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from llava_jax.kernels import AttentionAxes, KernelShardingWarning, UnsupportedAttention, attention
from llava_jax.kernels.attention import reference_attention
from llava_jax.sharding import ACT_HEADS, ACT_KV_HEADS, BATCH, DEFAULT_RULES, make_mesh, mesh_context

AXES = AttentionAxes(BATCH, ACT_HEADS, ACT_KV_HEADS)
T = 40  # off every tile size: the kernels pad


@pytest.fixture(scope="module")
def mesh():
    return make_mesh((2, 2, 2))


def _inputs(batch=4, n=4, k=2, h=16, seed=0):
    """q, k, v float32, masking (packed segments that differ per row, left padding of row 0), cotangent."""
    rng = np.random.default_rng(seed)
    normal = lambda *s: jnp.asarray(rng.standard_normal(s, dtype=np.float32))
    cuts = np.sort(rng.choice(np.arange(1, T), (batch, 2), replace=False), axis=1)
    seg = (np.arange(T)[None, None] >= cuts[:, :, None]).sum(1)
    real = np.ones((batch, T), bool)
    real[0, :7] = False
    kw = {"segment_ids": jnp.asarray(seg, jnp.int32), "padding_mask": jnp.asarray(real)}
    return normal(batch, T, n, h), normal(batch, T, k, h), normal(batch, T, k, h), kw, normal(batch, T, n, h)


def _value_and_grads(impl, q, k, v, kw, do, **extra):
    def loss(q, k, v):
        out = attention(q, k, v, causal=True, impl=impl, interpret=True, **kw, **extra)
        return jnp.sum(out * do), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


# TPU interpret mode synchronises the shards of a kernel with a barrier over every
# device; with 8 simulated CPU devices its backward deadlocks (the CPU client does not run
# all 8 at once), with 4 it runs. The split is the same kind: batch over a batch axis,
# heads over tensor.
SPLASH_MESH = (2, 1, 2)


@pytest.mark.parametrize("impl", ["pallas_gpu", "splash", "xla"])
def test_sharded_forward_and_gradients_equal_the_unsharded_reference(mesh, impl):
    """Packed segments, padding and GQA (4 query heads over 2 kv heads, split over tensor = 2)."""
    batch_spec = ("data", "fsdp")
    if impl == "splash":
        mesh, batch_spec = make_mesh(SPLASH_MESH, devices=jax.devices()[:4]), "data"
    q, k, v, kw, do = _inputs()
    ref_out, ref_grads = _value_and_grads("xla", q, k, v, kw, do)  # no mesh: one device's answer
    with mesh_context(mesh, DEFAULT_RULES):
        out, grads = _value_and_grads(impl, q, k, v, kw, do, axis_names=AXES)
    for name, got, want in [("out", out, ref_out), *zip(("dq", "dk", "dv"), grads, ref_grads)]:
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5, err_msg=f"{impl} {name}")
    if impl != "xla":  # the kernel's output stays split: batch over the batch rule's axes, heads over tensor
        assert out.sharding.spec == PartitionSpec(batch_spec, None, "tensor")
        assert grads[1].sharding.spec == PartitionSpec(batch_spec, None, "tensor")


def test_an_explicit_mesh_without_an_ambient_one(mesh):
    import flax.linen as nn

    q, k, v, kw, _ = _inputs(seed=1)
    f = jax.jit(
        lambda q, k, v: attention(
            q, k, v, causal=True, impl="pallas_gpu", interpret=True, mesh=mesh, axis_names=AXES, **kw
        )
    )
    with nn.logical_axis_rules(DEFAULT_RULES):
        out = f(q, k, v)
    np.testing.assert_allclose(out, reference_attention(q, k, v, causal=True, **kw), atol=2e-5)
    assert out.sharding.spec == PartitionSpec(("data", "fsdp"), None, "tensor")


def test_kv_heads_fewer_than_the_tensor_size_is_a_clear_error(mesh, monkeypatch):
    q, k, v, kw, _ = _inputs(k=1)  # multi-query: one kv head cannot split over tensor = 2
    with mesh_context(mesh, DEFAULT_RULES), pytest.raises(UnsupportedAttention, match=r"1 kv heads cannot be split"):
        attention(q, k, v, causal=True, impl="pallas_gpu", interpret=True, axis_names=AXES, **kw)
    # `auto` (made to pick pallas_gpu, as on a GPU) falls back to the reference, which GSPMD partitions.
    dispatch = importlib.import_module("llava_jax.kernels.attention")  # the module; the package exports the function
    monkeypatch.setattr(dispatch, "select_impl", lambda *a, **k: "pallas_gpu")
    with mesh_context(mesh, DEFAULT_RULES):
        f = jax.jit(lambda q, k, v: attention(q, k, v, causal=True, impl="auto", axis_names=AXES, **kw))
        assert "pallas_call" not in str(jax.make_jaxpr(f)(q, k, v))
        out = f(q, k, v)
    np.testing.assert_allclose(out, reference_attention(q, k, v, causal=True, **kw), atol=2e-5)


def test_a_batch_the_batch_axes_do_not_divide_is_split_as_far_as_it_divides(mesh):
    """Batch 2 over data x fsdp = 4: split over `data` only, with a warning naming `fsdp`."""
    q, k, v, kw, _ = _inputs(batch=2, seed=2)
    f = jax.jit(
        lambda q, k, v: attention(q, k, v, causal=True, impl="pallas_gpu", interpret=True, axis_names=AXES, **kw)
    )
    with mesh_context(mesh, DEFAULT_RULES), pytest.warns(KernelShardingWarning, match=r"batch 2 .*\('fsdp',\)"):
        out = f(q, k, v)
    np.testing.assert_allclose(out, reference_attention(q, k, v, causal=True, **kw), atol=2e-5)
    assert out.sharding.spec == PartitionSpec("data", None, "tensor")


def test_a_kernel_under_a_mesh_needs_axis_names_and_rules(mesh):
    q, k, v, kw, _ = _inputs()
    with mesh_context(mesh, DEFAULT_RULES), pytest.raises(UnsupportedAttention, match="axis_names="):
        attention(q, k, v, causal=True, impl="pallas_gpu", interpret=True, **kw)
    with jax.set_mesh(mesh), pytest.raises(UnsupportedAttention, match="rules in context"):  # a mesh, no rules
        attention(q, k, v, causal=True, impl="pallas_gpu", interpret=True, axis_names=AXES, **kw)
    rules = tuple((name, "fsdp" if name == ACT_KV_HEADS else axes) for name, axes in DEFAULT_RULES)
    with mesh_context(mesh, rules), pytest.raises(UnsupportedAttention, match="same mesh axes"):
        attention(q, k, v, causal=True, impl="pallas_gpu", interpret=True, axis_names=AXES, **kw)


# ------------------------------------------------------------------ the sharded train step
def _pallas_calls(jaxpr, inside=False):
    """(kernel name, inside a shard_map) for every pallas_call in a closed jaxpr, nested ones too."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            found.append((eqn.params["name"], inside))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    found += _pallas_calls(sub, inside or eqn.primitive.name == "shard_map")
    return found


def _gathered_qkv(hlo: str, heads, head_dims) -> list[tuple[str, ...]]:
    """All-gathers in compiled HLO whose result is a [B, T, heads, head dim] activation (q, k, v, out, grads).

    Weights never have that rank-4 shape ([D, N, H] kernels are rank 3), so any hit is an activation.
    """
    shapes = re.findall(r"= f32\[(\d+),(\d+),(\d+),(\d+)\]\S* all-gather\(", hlo)
    return [s for s in shapes if int(s[2]) in heads and int(s[3]) in head_dims]


def test_the_no_gather_check_sees_a_gather(mesh):
    """Without shard_map (the kernel called directly under GSPMD) q, k, v are gathered: the check below can fail."""
    from llava_jax.kernels import pallas_gpu

    q, k, v, kw, _ = _inputs()
    split = jax.sharding.NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, "tensor"))  # as the model's q, k, v
    with mesh_context(mesh, DEFAULT_RULES):
        f = jax.jit(
            lambda q, k, v: pallas_gpu.attention(q, k, v, causal=True, interpret=True, **kw), in_shardings=split
        )
        hlo = f.lower(q, k, v).compile().as_text()
    assert _gathered_qkv(hlo, (4, 2), (16,))


@pytest.mark.slow
def test_sharded_train_step_runs_each_kernel_in_shard_map_without_gathering_qkv(mesh):
    """The stage-2 step of configs/tiny.py with pallas_gpu on (2, 2, 2): every kernel (vision and LLM,
    forward and backward) sits inside a shard_map, and the compiled step gathers no q/k/v."""
    from llava_jax.sharding import batch_sharding
    from llava_jax.train import plan as planning
    from llava_jax.train.experiment import load_config
    from llava_jax.train.state import abstract_state, model_config, state_shardings
    from llava_jax.train.step import jit_train_step

    overrides = [
        "--config.init.kind=random",
        "--config.model.attention_impl=pallas_gpu",
        "--config.batch_size=4",
        f"--config.data.max_length={T}",
        f"--config.data.pad_multiple={T}",
    ]
    cfg = load_config("configs/tiny.py:finetune", overrides)
    config = model_config(cfg, planning.base_model_config(cfg)[0])
    abstract, optimizer, lr_fn = abstract_state(cfg, config)
    shardings = state_shardings(cfg, config, mesh, abstract)
    place = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    state = jax.tree.map(place, abstract, shardings)
    rows = batch_sharding(mesh, DEFAULT_RULES)
    batch = {name: place(x, rows) for name, x in planning.abstract_batch(cfg, config).items()}
    step = jit_train_step(
        config=config,
        optimizer=optimizer,
        lr_fn=lr_fn,
        micro_batches=1,
        freeze_vision=True,
        loss_chunk=cfg.loss_chunk,
        state_shardings=shardings,
        batch_sharding=rows,
    )
    with mesh_context(mesh, DEFAULT_RULES):
        traced = step.trace(state, batch)
        calls = _pallas_calls(traced.jaxpr.jaxpr)
        hlo = traced.lower().compile().as_text()
    names = {name for name, _ in calls}
    assert names == {"flash_attention_fwd", "flash_attention_dq", "flash_attention_dkv"}, names
    assert all(inside for _, inside in calls), calls
    llm, vision = config.llm, config.vision
    heads, head_dims = (llm.num_heads, llm.num_kv_heads, vision.num_heads), (llm.head_dim, vision.head_dim)
    assert not _gathered_qkv(hlo, heads, head_dims)
