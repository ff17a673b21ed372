"""Sharding rules: logical names -> mesh axes, loud replication, the batch sharding and the mesh context."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec

from llava_jax.sharding import (
    BATCH,
    DEFAULT_RULES,
    EMBED,
    HEADS,
    MLP,
    ShardingWarning,
    activation_constraint,
    batch_axes,
    batch_sharding,
    logical_to_spec,
    make_mesh,
    mesh_context,
)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh((2, 2, 2))


def test_dividing_dimensions_follow_the_rules_quietly(mesh):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert logical_to_spec((EMBED, MLP), DEFAULT_RULES, (64, 128), mesh) == PartitionSpec("fsdp", "tensor")


def test_a_dimension_the_axis_does_not_divide_is_replicated_with_a_warning(mesh):
    with pytest.warns(ShardingWarning, match=r"dimension 1 \('heads', size 3\).*mesh axis 'tensor' \(size 2\)"):
        spec = logical_to_spec((EMBED, HEADS), DEFAULT_RULES, (64, 3), mesh)
    assert spec == PartitionSpec("fsdp", None)


def test_strict_mode_raises_instead(mesh):
    with pytest.raises(ValueError, match="not divisible by mesh axis 'tensor'"):
        logical_to_spec((EMBED, HEADS), DEFAULT_RULES, (64, 3), mesh, strict=True)


def test_size_one_axes_never_warn():
    mesh = make_mesh((1, 8, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert logical_to_spec((HEADS,), DEFAULT_RULES, (3,), mesh) == PartitionSpec("tensor")  # size 1 divides


def test_a_name_without_a_rule_is_an_error():
    with pytest.raises(KeyError, match="logical axis 'act_vocab' has no sharding rule"):
        logical_to_spec(("act_vocab",), DEFAULT_RULES)


def test_batch_sharding_follows_the_batch_rule(mesh):
    assert batch_axes(DEFAULT_RULES) == ("data", "fsdp")
    assert batch_sharding(mesh, DEFAULT_RULES).spec == PartitionSpec(("data", "fsdp"))
    only_data = tuple((name, "data") if name == BATCH else (name, axes) for name, axes in DEFAULT_RULES)
    assert batch_sharding(mesh, only_data).spec == PartitionSpec(("data",))
    x = jax.device_put(jnp.zeros((8, 3)), batch_sharding(mesh, only_data))
    assert x.sharding.shard_shape(x.shape) == (4, 3)


def test_mesh_context_resolves_activation_constraints(mesh):
    def f(x):
        return activation_constraint(x * 2, (BATCH, None))

    x = jnp.ones((8, 4))
    with mesh_context(mesh, DEFAULT_RULES):
        hlo = jax.jit(f).lower(x).as_text()
    assert 'sdy.sharding_constraint %1 <@mesh, [{"data", "fsdp"}, {}]>' in hlo
    plain = jax.jit(f).lower(x).as_text()  # outside the context the constraint is the identity
    assert "sharding_constraint" not in plain
    assert nn.get_logical_axis_rules() == ()
