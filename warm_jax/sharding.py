"""The mesh and the one logical-axis rules table.

Layers name their axes (`embed`, `mlp`, `heads`, ...); this module alone maps those names to mesh
axes (t5x `partitioning.py`, big_vision `sharding_rules`). The mesh always carries the four axes below
(size 1 where unused) so that every rule resolves on every mesh.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("member", "data", "fsdp", "model")

# logical name -> mesh axis (or axes). Rules are tried in order; a mesh axis is used at most once per
# array, so `embed` falls back to unsharded where `batch` already took `fsdp` (activations).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("member", "member"),
    ("batch", ("data", "fsdp")),
    ("vocab", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("embed", "fsdp"),
    ("embed", None),
    ("length", None),
    ("kv_length", None),
    ("head_dim", None),
    ("layers", None),
    ("reward", None),
)


def make_mesh(*, member: int = 1, data: int = -1, fsdp: int = 1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (member, data, fsdp, model) mesh over `devices` (all by default); -1 takes what is left."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = dict(member=member, data=data, fsdp=fsdp, model=model)
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {free}")
    for k, v in sizes.items():
        if v != -1 and v < 1:
            raise ValueError(f"mesh.{k}={v}: must be >= 1 or -1")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(f"mesh: {len(devices)} devices do not divide by the fixed axes {sizes}")
        sizes[free[0]] = len(devices) // fixed
    total = math.prod(sizes.values())
    if total > len(devices):
        raise ValueError(f"mesh {sizes} needs {total} devices, only {len(devices)} exist")
    shape = tuple(sizes[a] for a in MESH_AXES)
    return Mesh(np.asarray(devices[:total]).reshape(shape), MESH_AXES)


def logical_to_spec(names: Sequence[str | None] | None,
                    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> PartitionSpec:
    """The mesh PartitionSpec for one array's logical axis names."""
    if names is None:
        return PartitionSpec()
    return nn.logical_to_mesh_axes(tuple(names), rules)


def logical_specs(boxed_tree: Any) -> Any:
    """Logical PartitionSpecs (names, not mesh axes) of a tree of `nn.LogicallyPartitioned` leaves."""
    return nn.get_partition_spec(boxed_tree)


def mesh_shardings(boxed_tree: Any, mesh: Mesh,
                   rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for every leaf of a (possibly abstract) boxed parameter tree."""
    specs = logical_specs(boxed_tree)
    return jax.tree.map(lambda s: NamedSharding(mesh, logical_to_spec(tuple(s), rules)), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def shard_shape(shape: Sequence[int], spec: PartitionSpec, axis_sizes: Mapping[str, int]) -> tuple:
    """Per-device shape of an array of `shape` laid out by `spec` on a mesh of `axis_sizes`."""
    out = []
    for i, dim in enumerate(shape):
        axes = spec[i] if i < len(spec) else None
        axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        out.append(-(-dim // math.prod(axis_sizes[a] for a in axes)))
    return tuple(out)


def per_device_bytes(abstract_tree: Any, mesh_specs: Any, axis_sizes: Mapping[str, int]) -> int:
    """Bytes one device holds of `abstract_tree` (ShapeDtypeStructs) under `mesh_specs`."""
    leaves = jax.tree.leaves(abstract_tree)
    specs = jax.tree.leaves(mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    if len(leaves) != len(specs):
        raise ValueError(f"{len(leaves)} arrays but {len(specs)} specs")
    return sum(math.prod(shard_shape(x.shape, s, axis_sizes)) * np.dtype(x.dtype).itemsize
               for x, s in zip(leaves, specs))


# --- activation constraints ------------------------------------------------------------------------
_ACTIVE: list[tuple[Mesh, tuple]] = []


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Iterator[Mesh]:
    """Within this context (at trace time) `constrain` pins activations to `mesh`."""
    _ACTIVE.append((mesh, tuple(rules)))
    try:
        yield mesh
    finally:
        _ACTIVE.pop()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside `activate` (single-device use)."""
    if not _ACTIVE:
        return x
    mesh, rules = _ACTIVE[-1]
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, rules)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int, leading: Sequence[str] = ("batch",)) -> NamedSharding:
    """Leading axes by their logical names (batch; or member, batch), the rest replicated."""
    names = tuple(leading)[:ndim] + (None,) * max(0, ndim - len(leading))
    return NamedSharding(mesh, logical_to_spec(names))


def place(tree: Any, shardings: Any) -> Any:
    """Put host-complete values (numpy, or arrays every process holds whole) onto `shardings`.

    `jax.device_put` cannot move a one-device array onto devices of other processes (no
    cross-host transfers on CPU); building each global array from the process's local copy works
    on one host and on many."""
    def put(x, s):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x if x.sharding == s else jax.device_put(x, s)
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])
    return jax.tree.map(put, tree, shardings)
