"""Logical axis names, their mapping to mesh axes, and mesh building.

Model code names only logical axes (the constants below). Rules map each
logical name to mesh axes (`data`, `fsdp`, `tensor`); the rules live in the
experiment config and default to `DEFAULT_RULES`. A logical name without a
rule is an error, never a silent replication.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec


class ShardingWarning(UserWarning):
    """A mesh axis a rule asks for does not divide a dimension, so that dimension is replicated there."""


MESH_AXES = ("data", "fsdp", "tensor")

# Parameter axes.
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"
KV = "kv"  # per-head feature dimension
MLP = "mlp"
VOCAB = "vocab"
LAYERS = "layers"
NORM = "norm"
# Activation axes.
BATCH = "batch"
LENGTH = "length"
ACT_EMBED = "act_embed"
# Query and key/value heads of attention activations: the kernels split them over these
# rules' mesh axes inside `shard_map` (llava_jax.kernels), the `xla` path through GSPMD.
ACT_HEADS = "act_heads"
ACT_KV_HEADS = "act_kv_heads"

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    (EMBED, "fsdp"),
    (HEADS, "tensor"),
    (KV_HEADS, "tensor"),
    (KV, None),
    (MLP, "tensor"),
    (VOCAB, "tensor"),
    (LAYERS, None),
    (NORM, None),
    (BATCH, ("data", "fsdp")),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, "tensor"),
    (ACT_KV_HEADS, "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape over (`data`, `fsdp`, `tensor`); one size may be -1 (= the remaining devices).

    Multislice (several TPU slices joined by the data-center network, DCN): `data`, `fsdp`
    and `tensor` are the sizes within one slice (its fast ICI links), and `dcn_data` x
    `dcn_fsdp` slices multiply `data` and `fsdp`, so the mesh is (dcn_data * data,
    dcn_fsdp * fsdp, tensor). `dcn_data=0` means the number of slices divided by `dcn_fsdp`:
    by default slices are data parallel, which sends the least over DCN (one gradient
    reduction per step; FSDP's all-gathers stay inside a slice). Devices without a slice
    (CPU, GPU, one TPU slice) form one slice.
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    dcn_data: int = 0
    dcn_fsdp: int = 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """The sizes within one slice."""
        return (self.data, self.fsdp, self.tensor)


MESH_PRESETS = {
    "fsdp": MeshConfig(data=1, fsdp=-1, tensor=1),
    "fsdp_tensor": MeshConfig(data=1, fsdp=-1, tensor=2),
    "data": MeshConfig(data=-1, fsdp=1, tensor=1),
}


def mesh_config_from(section) -> MeshConfig:
    """`MeshConfig` from a config's `mesh` section (a mapping): a `preset` name, or the sizes, plus `dcn_*`."""
    keys = ("dcn_data", "dcn_fsdp")
    if section.get("preset"):
        if section["preset"] not in MESH_PRESETS:
            raise ValueError(f"mesh.preset {section['preset']!r} not in {sorted(MESH_PRESETS)}")
        base = MESH_PRESETS[section["preset"]]
    else:
        keys = ("data", "fsdp", "tensor", *keys)
        base = MeshConfig()
    return dataclasses.replace(base, **{k: int(section[k]) for k in keys if k in section})


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replace a single -1 in `shape` so the product equals `num_devices`, or raise."""
    shape = list(shape)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh shape {shape} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, have {num_devices}")
    return tuple(shape)


def device_slice(device) -> int | None:
    """The TPU slice a device belongs to (`slice_index`), None where devices have no slices."""
    return getattr(device, "slice_index", None)


def group_by_slice(devices: Sequence, slice_of: Callable = device_slice) -> list[list]:
    """`devices` grouped by `slice_of(device)`, slices in index order; one group if any device has no slice."""
    keys = [slice_of(d) for d in devices]
    if any(k is None for k in keys):
        return [list(devices)]
    groups = collections.defaultdict(list)
    for key, device in zip(keys, devices, strict=True):
        groups[key].append(device)
    return [groups[k] for k in sorted(groups)]


def hybrid_device_array(ici_shape: Sequence[int], dcn_shape: Sequence[int], slices: Sequence[Sequence]) -> np.ndarray:
    """Devices arranged as `ici_shape` within each slice and `dcn_shape` across slices.

    `jax.experimental.mesh_utils.create_hybrid_device_mesh` for given slices (so that tests can
    simulate slices on CPU): each slice laid out for its own interconnect
    (`create_device_mesh`), slice i at position i of `dcn_shape` (row-major); the result has
    shape `ici_shape * dcn_shape` (elementwise).
    """
    per_slice = [mesh_utils.create_device_mesh(tuple(ici_shape), list(devices)) for devices in slices]
    positions = np.arange(len(slices)).reshape(tuple(dcn_shape))
    blocks = np.vectorize(lambda i: per_slice[i], otypes=[object])(positions)
    return np.block(blocks.tolist())


def make_mesh(config: MeshConfig | Sequence[int] = MeshConfig(), devices=None, *, slice_of=device_slice) -> Mesh:
    """A `Mesh` with axes (`data`, `fsdp`, `tensor`), all `AxisType.Auto`.

    Args:
      config: a `MeshConfig` (multislice: its class docstring) or a 3-tuple of sizes over all
        devices (one may be -1).
      devices: devices to use (default all, `jax.devices()`).
      slice_of: device -> its slice (default the TPU `slice_index`; tests simulate slices).
    """
    devices = list(jax.devices() if devices is None else devices)
    axis_types = (AxisType.Auto,) * 3
    if not isinstance(config, MeshConfig):
        shape = resolve_mesh_shape(tuple(config), len(devices))
        return _single_slice_mesh(shape, devices)
    slices = group_by_slice(devices, slice_of)
    dcn_data, dcn_fsdp = config.dcn_data, config.dcn_fsdp
    if dcn_data == 0:
        if len(slices) % dcn_fsdp:
            raise ValueError(f"mesh.dcn_fsdp={dcn_fsdp} does not divide the {len(slices)} slices")
        dcn_data = len(slices) // dcn_fsdp
    dcn = (dcn_data, dcn_fsdp, 1)
    if math.prod(dcn) > 1 and len(slices) == 1:
        # No slice indices (GPU, CPU): processes are the units across the slower network, as in jax.
        slices = group_by_slice(devices, lambda d: d.process_index)
    if math.prod(dcn) != len(slices):
        raise ValueError(
            f"mesh.dcn_data={dcn_data} x mesh.dcn_fsdp={dcn_fsdp} must equal the number of slices, "
            f"{len(slices)} (TPU slices, or processes where devices have no slice)"
        )
    if len(slices) == 1:
        return _single_slice_mesh(resolve_mesh_shape(config.shape, len(devices)), devices)
    sizes = sorted({len(s) for s in slices})
    if len(sizes) > 1:
        raise ValueError(f"slices of unequal sizes {sizes} devices cannot form one mesh")
    ici = resolve_mesh_shape(config.shape, sizes[0])
    return Mesh(hybrid_device_array(ici, dcn, slices), MESH_AXES, axis_types=axis_types)


def _single_slice_mesh(shape: tuple[int, ...], devices: list) -> Mesh:
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _rule_table(rules: Rules) -> dict:
    table = {}
    for name, axes in rules:
        table.setdefault(name, axes)
    return table


def logical_to_spec(
    logical: Sequence[str | None],
    rules: Rules = DEFAULT_RULES,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    *,
    strict: bool = False,
) -> PartitionSpec:
    """PartitionSpec for one array's logical axis names.

    With `shape` and `mesh`, a mesh axis (of size > 1) that does not divide the
    dimension is dropped for that dimension with a `ShardingWarning` naming the
    axis, the dimension and the sizes (that dimension is replicated over the
    axis), or a `ValueError` when `strict`; a mesh axis is used at most once.
    Raises `KeyError` for a logical name without a rule.
    """
    table = _rule_table(rules)
    used: set[str] = set()
    out = []
    for dim, name in enumerate(logical):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule (rules cover {sorted(table)})")
        axes = table[name]
        axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        kept = []
        for axis in axes:
            if axis in used:
                continue
            if mesh is not None and axis not in mesh.shape:
                raise KeyError(f"rule maps {name!r} to mesh axis {axis!r}, not in mesh axes {tuple(mesh.shape)}")
            if shape is not None and mesh is not None:
                size = mesh.shape[axis] * math.prod(mesh.shape[a] for a in kept)
                if shape[dim] % size:
                    if mesh.shape[axis] > 1:
                        message = (
                            f"dimension {dim} ({name!r}, size {shape[dim]}) of shape {tuple(shape)} is not divisible "
                            f"by mesh axis {axis!r} (size {size}); it is replicated over {axis!r}"
                        )
                        if strict:
                            raise ValueError(message)
                        warnings.warn(message, ShardingWarning, stacklevel=2)
                    continue
            kept.append(axis)
        used.update(kept)
        out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    return PartitionSpec(*out)


def logical_axes_of(boxed_tree):
    """Tree of logical axis-name tuples from a tree of `nn.LogicallyPartitioned` boxes."""

    def names(x):
        if isinstance(x, nn.LogicallyPartitioned):
            return tuple(x.names)
        return (None,) * len(getattr(x, "shape", ()))

    return jax.tree.map(names, boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def tree_shardings(logical_tree, abstract_tree, mesh: Mesh, rules: Rules = DEFAULT_RULES, *, strict: bool = False):
    """`NamedSharding` tree for `abstract_tree` (arrays or ShapeDtypeStructs) given its logical names.

    A dimension that a mesh axis does not divide is replicated over it with one
    `ShardingWarning` per parameter, or raises `ValueError` when `strict`.
    """
    is_names = lambda x: isinstance(x, tuple) and all(isinstance(n, (str, type(None))) for n in x)
    return jax.tree.map(
        lambda names, a: NamedSharding(mesh, logical_to_spec(names, rules, a.shape, mesh, strict=strict)),
        logical_tree,
        abstract_tree,
        is_leaf=is_names,
    )


def activation_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain activation `x` to logical `names` when a mesh and rules are in context; else identity."""
    return nn.with_logical_constraint(x, tuple(names))


def batch_axes(rules: Rules = DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes the leading (batch) dimension is split over, as the `batch` rule says."""
    axes = _rule_table(rules).get(BATCH)
    return () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Sharding of a global batch array: dimension 0 over `batch_axes(rules)`, the rest replicated.

    Every caller that places batches (the training loop, the planner, the data
    pipeline, evaluation) takes it from here, so the batch split follows the rules.
    """
    axes = tuple(a for a in batch_axes(rules) if a in mesh.shape)
    return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def mesh_context(mesh: Mesh | None, rules: Rules = DEFAULT_RULES) -> contextlib.ExitStack:
    """Context in which model code resolves activation constraints: `jax.set_mesh(mesh)` + the logical rules.

    With `mesh` None it does nothing (single-device code paths).
    """
    stack = contextlib.ExitStack()
    if mesh is not None:
        stack.enter_context(jax.set_mesh(mesh))
        stack.enter_context(nn.logical_axis_rules(rules))
    return stack
