"""Running an attention kernel once per shard under a mesh, through `jax.shard_map`.

A Pallas (Triton or Mosaic) or cuDNN custom call has no partitioning rule: inside a
GSPMD-partitioned `jit`, XLA would gather q, k and v onto every device and each device
would compute the whole batch's attention. Under a mesh, `llava_jax.kernels.attention`
therefore calls the kernel inside `shard_map`, where each device sees only its rows and
heads:

- the batch is split over the mesh axes of the `batch` logical rule;
- query and key/value heads over the mesh axes of the heads rules (`act_heads`,
  `act_kv_heads` in `llava_jax.sharding.DEFAULT_RULES`, normally `tensor`);
- sequence length and head dim stay whole on every device.

The logical names come from the caller (`AttentionAxes`; the model passes the
`llava_jax.sharding` constants) and are resolved with the logical rules in context
(`flax.linen.logical_axis_rules`, set by `llava_jax.sharding.mesh_context`). Cases the
split cannot express are errors, never a silent gather:

- heads whose count the heads axes do not divide (e.g. GQA with fewer kv heads than
  the `tensor` size): `UnsupportedAttention`, naming the sizes and the ways out;
- a batch that the batch axes do not divide (e.g. one prompt on eight devices): the
  documented fallback is to drop the trailing batch axes until the rest divide it,
  with a `KernelShardingWarning` naming them; the rows are then computed redundantly
  on the devices of the dropped axes (which is what GSPMD does with such a batch);
- a mesh of several devices without axis names or without rules: `UnsupportedAttention`.

Letters: B batch, T query length, S key length, N query heads, K key/value heads, H head dim.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
from jax.sharding import AxisType, PartitionSpec


class KernelShardingWarning(UserWarning):
    """A kernel's batch could not be split over every batch axis; it is replicated over the rest."""


class AttentionAxes(NamedTuple):
    """Logical axis names of an attention call's batch, query heads and key/value heads."""

    batch: str
    heads: str
    kv_heads: str


@dataclasses.dataclass(frozen=True)
class Partition:
    """How one attention call is split: mesh axes for the batch and for the heads (query and kv)."""

    batch: tuple[str, ...]
    heads: tuple[str, ...]
    manual: frozenset[str]  # the mesh axes the shard_map makes manual (all not already manual)
    mesh: object  # the explicit Mesh, or None for the ambient one

    def specs(self):
        """(PartitionSpec of q/k/v/out [B, T|S, N|K, H], PartitionSpec of the [B, T|S] masks)."""
        b = _spec_entry(self.batch)
        return PartitionSpec(b, None, _spec_entry(self.heads), None), PartitionSpec(b, None)


def _spec_entry(axes: tuple[str, ...]):
    return None if not axes else (axes[0] if len(axes) == 1 else axes)


def _rule_axes(rules, name: str) -> tuple[str, ...] | None:
    """Mesh axes of the first rule for `name` (None when no rule names it)."""
    for logical, axes in rules:
        if logical == name:
            return () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    return None


def _active_mesh(mesh):
    """(mesh to describe the split, its axes that are not already manual)."""
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None, {}
    types = dict(zip(mesh.axis_names, getattr(mesh, "axis_types", ()) or ()))
    sizes = {a: s for a, s in mesh.shape.items() if types.get(a) != AxisType.Manual}
    return mesh, sizes


def partition(impl: str, q, k, *, mesh=None, axis_names: AttentionAxes | None = None, rules=None) -> Partition | None:
    """The per-shard split of this call on `mesh` (default: the ambient `jax.set_mesh` mesh).

    Returns None when there is nothing to split (no mesh, or one device). Raises
    `UnsupportedAttention` when the split cannot be expressed (see module docstring).

    Args:
      q: float[B, T, N, H]; k: float[B, S, K, H] (shapes only).
      axis_names: logical names of batch, query heads and kv heads.
      rules: logical axis rules (default: `flax.linen.get_logical_axis_rules()`).
    """
    from llava_jax.kernels.attention import UnsupportedAttention

    explicit = mesh
    mesh, sizes = _active_mesh(mesh)
    if mesh is None or math.prod(sizes.values()) == 1:
        return None
    where = f"attention impl {impl!r} under a mesh {dict(mesh.shape)}"
    if rules is None:
        import flax.linen as nn

        rules = nn.get_logical_axis_rules()
    if axis_names is None or not rules:
        raise UnsupportedAttention(
            f"{where} runs per shard and needs the logical axis names of batch and heads (axis_names=) and the "
            "sharding rules in context (llava_jax.sharding.mesh_context); without them XLA would gather q, k, v "
            "onto every device. impl='xla' is partitioned by GSPMD and needs neither"
        )

    def resolve(name):
        axes = _rule_axes(rules, name)
        if axes is None:
            raise UnsupportedAttention(f"{where}: logical axis {name!r} has no sharding rule")
        return tuple(a for a in axes if sizes.get(a, 1) > 1)  # absent, manual and size-1 axes split nothing

    batch, heads, kv_heads = (resolve(n) for n in axis_names)
    if heads != kv_heads:
        raise UnsupportedAttention(
            f"{where}: query heads ({axis_names.heads!r} -> {heads}) and kv heads ({axis_names.kv_heads!r} -> "
            f"{kv_heads}) must be split over the same mesh axes, or each shard's query heads lose their kv group"
        )
    if set(heads) & set(batch):
        raise UnsupportedAttention(f"{where}: batch {batch} and heads {heads} share a mesh axis")
    n_split = math.prod(sizes[a] for a in heads)
    n, kh = q.shape[2], k.shape[2]
    if n % n_split or kh % n_split:
        raise UnsupportedAttention(
            f"{where}: {n} query heads and {kh} kv heads cannot be split over {heads} ({n_split} devices); "
            f"use a tensor size that divides {kh}, map {axis_names.kv_heads!r} and {axis_names.heads!r} to no mesh "
            "axis (heads whole on each device), or impl='xla'"
        )
    b = q.shape[0]
    kept = []
    for axis in batch:
        if b % (math.prod(sizes[a] for a in kept) * sizes[axis]):
            break
        kept.append(axis)
    if len(kept) < len(batch):
        dropped = batch[len(kept) :]
        warnings.warn(
            f"{where}: batch {b} does not divide over {batch}; the kernel's rows are split over {tuple(kept)} only "
            f"and computed redundantly on the devices of {dropped}",
            KernelShardingWarning,
            stacklevel=3,
        )
    return Partition(batch=tuple(kept), heads=heads, manual=frozenset(sizes), mesh=explicit)


def run(fn: Callable, part: Partition, q, k, v, masking: dict):
    """`fn(q, k, v, **masking)` once per shard of `part`; masking arrays are [B, T] or [B, S].

    Returns float[B, T, N, H] laid out as `part` splits it.
    """
    names = [name for name, x in masking.items() if x is not None]
    qkv_spec, mask_spec = part.specs()

    def local(q, k, v, *masks):
        return fn(q, k, v, **dict(zip(names, masks)))

    sharded = jax.shard_map(
        local,
        mesh=part.mesh,
        in_specs=(qkv_spec, qkv_spec, qkv_spec, *[mask_spec] * len(names)),
        out_specs=qkv_spec,
        axis_names=part.manual,
        # Pallas and Mosaic calls carry no varying-manual-axes types; the specs say it all.
        check_vma=False,
    )
    return sharded(q, k, v, *[masking[name] for name in names])
