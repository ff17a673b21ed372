"""Sharding rules: logical names -> mesh axes, loud replication, the batch sharding and the mesh context."""

import dataclasses
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec

from llava_jax.sharding import (
    BATCH,
    DEFAULT_RULES,
    EMBED,
    HEADS,
    MLP,
    MeshConfig,
    ShardingWarning,
    activation_constraint,
    batch_axes,
    batch_sharding,
    group_by_slice,
    hybrid_device_array,
    logical_to_spec,
    make_mesh,
    mesh_config_from,
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


# ------------------------------------------------------------------ multislice (DCN)
def _slice(device) -> int:
    """Two simulated slices of the 8 CPU devices, interleaved so that a plain reshape would mix them."""
    return device.id % 2


def test_two_slices_are_data_parallel_by_default():
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1), slice_of=_slice)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    for position in range(2):  # the data axis crosses slices; everything else stays inside one
        assert {_slice(d) for d in mesh.devices[position].flat} == {position}


def test_the_batch_splits_across_slices_and_parameters_within_them():
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), slice_of=_slice)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    batch = jax.device_put(jnp.arange(8 * 3).reshape(8, 3), batch_sharding(mesh))
    for shard in batch.addressable_shards:
        rows = range(8)[shard.index[0]]
        assert len(rows) == 2 and all(r // 4 == _slice(shard.device) for r in rows), (shard.device, rows)
    # An FSDP-sharded parameter: each slice holds all of it; its pieces never cross DCN.
    weight = jax.device_put(jnp.zeros((8, 8)), NamedSharding(mesh, logical_to_spec((EMBED, MLP))))
    holders = {}
    for shard in weight.addressable_shards:
        holders.setdefault(str(shard.index), set()).add(_slice(shard.device))
    assert len(holders) == 4 and all(slices == {0, 1} for slices in holders.values())


def test_fsdp_across_slices_when_asked():
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=2), slice_of=_slice)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert [_slice(d) for d in mesh.devices[0, :, 0]] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_slice_counts_that_do_not_fit_are_named():
    with pytest.raises(ValueError, match=r"dcn_data=4 x mesh.dcn_fsdp=1 must equal the number of slices, 2"):
        make_mesh(MeshConfig(dcn_data=4), slice_of=_slice)
    with pytest.raises(ValueError, match=r"dcn_fsdp=3 does not divide the 2 slices"):
        make_mesh(MeshConfig(dcn_fsdp=3), slice_of=_slice)
    with pytest.raises(ValueError, match=r"unequal sizes \[3, 5\]"):
        make_mesh(MeshConfig(), slice_of=lambda d: int(d.id < 3))
    # CPU devices have no slices: a requested DCN axis needs that many processes.
    with pytest.raises(ValueError, match=r"must equal the number of slices, 1 \(TPU slices, or processes"):
        make_mesh(MeshConfig(dcn_data=2))
    assert dict(make_mesh(MeshConfig()).shape) == {"data": 1, "fsdp": 8, "tensor": 1}  # one slice: as before


def test_the_layout_is_jax_hybrid_mesh():
    """`hybrid_device_array` on given slices equals jax's create_hybrid_device_mesh on devices with slice_index."""

    @dataclasses.dataclass(frozen=True)
    class FakeDevice:
        id: int
        slice_index: int
        platform: str = "cpu"
        device_kind: str = "cpu"
        process_index: int = 0

    fakes = [FakeDevice(i, i % 4) for i in range(16)]
    expected = mesh_utils.create_hybrid_device_mesh((1, 2, 2), (2, 2, 1), fakes)
    ours = hybrid_device_array((1, 2, 2), (2, 2, 1), group_by_slice(fakes))
    assert ours.shape == expected.shape == (2, 4, 2)
    assert [[d.id for d in row.flat] for row in ours] == [[d.id for d in row.flat] for row in expected]


def test_mesh_config_from_a_config_section():
    assert mesh_config_from({"preset": "", "data": 2, "fsdp": -1, "tensor": 1, "dcn_data": 0}) == MeshConfig(
        2, -1, 1, 0, 1
    )
    assert mesh_config_from({"preset": "fsdp_tensor", "data": 9, "dcn_fsdp": 2}) == MeshConfig(1, -1, 2, 0, 2)
    assert mesh_config_from({"data": 1, "fsdp": 4, "tensor": 2}) == MeshConfig(1, 4, 2)
    with pytest.raises(ValueError, match="mesh.preset 'nope'"):
        mesh_config_from({"preset": "nope"})
