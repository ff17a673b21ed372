"""Remat policies by name: every policy gives the gradients of no remat; `minimal` spares the kernel's rerun."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llava_jax.config import SUPPORTED_REMAT_POLICIES
from llava_jax.model.llama import REMAT_POLICIES, REMAT_SAVES, LlamaModel
from llava_jax.presets import tiny

B, T = 2, 24


@pytest.fixture(scope="module")
def inputs():
    """(params, embeds, positions, segment ids) of the tiny decoder on two packed rows."""
    config = tiny().llm
    rng = np.random.default_rng(0)
    embeds = jnp.asarray(rng.standard_normal((B, T, config.hidden_size), dtype=np.float32))
    seg = jnp.asarray([[1] * 10 + [2] * 14, [1] * 20 + [0] * 4], jnp.int32)
    positions = jnp.asarray([list(range(10)) + list(range(14)), list(range(24))], jnp.int32)
    params = jax.jit(LlamaModel(config).init)(jax.random.PRNGKey(0), embeds, positions)["params"]
    return params, embeds, positions, seg


def _loss(policy: str, inputs, impl: str = "xla"):
    """Mean squared logits of the tiny decoder with `policy`, as a function of the params."""
    _, embeds, positions, seg = inputs
    model = LlamaModel(dataclasses.replace(tiny().llm, attention_impl=impl, remat_policy=policy))

    def loss(p):
        logits, _ = model.apply({"params": p}, embeds, positions, segment_ids=seg)
        return jnp.mean(jnp.square(logits))

    return loss


def test_every_supported_policy_has_a_rule_and_a_description():
    assert set(REMAT_POLICIES) | {"none"} == set(SUPPORTED_REMAT_POLICIES) == set(REMAT_SAVES)


def test_each_policy_gives_the_gradients_of_no_remat_in_float32(inputs):
    params = inputs[0]
    policies = ("none", *REMAT_POLICIES)
    # One jit for all policies: one compilation instead of six.
    everything = jax.jit(lambda p: {name: jax.value_and_grad(_loss(name, inputs))(p) for name in policies})(params)
    ref_value, ref_grads = everything["none"]
    for policy in REMAT_POLICIES:
        value, grads = everything[policy]
        assert float(value) == pytest.approx(float(ref_value), rel=1e-6), policy
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=policy)


def _live_forward_kernels(jaxpr) -> int:
    """pallas_call forward kernels whose outputs something uses (dead ones are dropped by XLA)."""
    used = {id(v) for e in jaxpr.eqns for v in e.invars} | {id(v) for v in jaxpr.outvars}
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call" and eqn.params["name"] == "flash_attention_fwd":
            count += any(id(v) in used for v in eqn.outvars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    count += _live_forward_kernels(sub)
    return count


@pytest.mark.parametrize("policy, forwards", [("none", 1), ("minimal", 1), ("full", 2), ("qkv_proj", 2)])
def test_minimal_keeps_the_kernel_output_and_statistics_so_the_backward_does_not_rerun_it(inputs, policy, forwards):
    """pallas_gpu names its output and log-sum-exp: `minimal` saves them, `full` and `qkv_proj` rerun the kernel."""
    loss = _loss(policy, inputs, impl="pallas_gpu")
    jaxpr = jax.make_jaxpr(jax.grad(loss))(inputs[0]).jaxpr  # tracing only: nothing is compiled
    assert _live_forward_kernels(jaxpr) == forwards
