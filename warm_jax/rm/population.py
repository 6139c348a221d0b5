"""M reward-model fine-tunings as separate runs or as ONE vmapped program over a `member` axis.

A member's step is the ordinary train step with its dropout rate as a traced argument; its learning
rate lives in its optimiser state and its data order in its own grain iterator. The population step
is `vmap` of the member step, so member i of a population computes exactly what run i alone does.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from warm_jax.train import TrainState, make_train_step


def set_learning_rate(opt_state: Any, lr: float) -> Any:
    """Set the injected `step_size` (−lr) wherever `inject_hyperparams` put one."""
    # duck-typed: optax names the state class differently across versions
    def injected(node) -> bool:
        return hasattr(node, "hyperparams") and hasattr(node, "_replace")

    found = []

    def fix(node):
        if injected(node) and "step_size" in node.hyperparams:
            found.append(1)
            old = node.hyperparams["step_size"]
            return node._replace(hyperparams=dict(node.hyperparams,
                                                  step_size=jnp.asarray(-lr, old.dtype)))
        return node
    out = jax.tree.map(fix, opt_state, is_leaf=injected)
    if not found:
        raise ValueError("optimiser state has no injected step_size to set the learning rate on")
    return out


def member_state(params: Any, tx: optax.GradientTransformation, learning_rate: float,
                 rng_seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=set_learning_rate(tx.init(params), learning_rate),
                      rng=jax.random.PRNGKey(rng_seed))


def make_member_step(loss_fn, tx: optax.GradientTransformation):
    """`loss_fn(params, batch, rng, dropout_rate)` -> `step(state, batch, dropout_rate)`."""
    def step(state, batch, dropout_rate):
        return make_train_step(lambda p, b, r: loss_fn(p, b, r, dropout_rate), tx)(state, batch)
    return step


def single_run_step(member_step, dropout_rate: float):
    return lambda state, batch: member_step(state, batch, jnp.float32(dropout_rate))


POPULATION_IMPLS = ("auto", "vmap", "map")


def platform_impl(impl: str = "auto") -> str:
    """'auto' picks the faster way to run M copies of one program on this platform: `map` on a
    CPU (batched matmuls are slower there than M plain ones: bench population_*speedup), `vmap`
    on accelerators, where one small member leaves the chip idle."""
    if impl not in POPULATION_IMPLS:
        raise ValueError(f"impl={impl!r}: allowed {POPULATION_IMPLS}")
    if impl != "auto":
        return impl
    return "map" if jax.default_backend() == "cpu" else "vmap"


def population_step(member_step, dropouts: Sequence[float], impl: str = "auto"):
    """All members in one program over the leading member axis of state and batch.

    `vmap` batches the members' matmuls (and shards them over the mesh's `member` axis): the choice
    on accelerators, where one small member leaves the chip idle. `map` (lax.map) runs them one
    after another inside the same program: on a CPU, already compute-bound at one member, it keeps
    each member's working set small and still saves the per-run compilations and dispatch.
    """
    impl = platform_impl(impl)
    dropout_M = jnp.asarray(dropouts, jnp.float32)
    if impl == "map":
        return lambda state, batch: jax.lax.map(lambda a: member_step(*a), (state, batch, dropout_M))
    vstep = jax.vmap(member_step, in_axes=(0, 0, 0), spmd_axis_name="member")
    return lambda state, batch: vstep(state, batch, dropout_M)


def stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def committed(tree: Any) -> Any:
    """`tree` committed to its leaves' own shardings: a jitted function's outputs are committed,
    so inputs built by eager ops (uncommitted) would make its second call compile it again."""
    return jax.device_put(tree, jax.tree.map(lambda x: x.sharding, tree))


def unstack(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: x[i], tree)


def with_member_axis(shardings: Any, mesh: Mesh) -> Any:
    """A member's shardings with the `member` mesh axis prepended to every array."""
    return jax.tree.map(lambda s: NamedSharding(mesh, PartitionSpec("member", *s.spec)), shardings,
                        is_leaf=lambda x: isinstance(x, NamedSharding))


class StackedIterator:
    """M data iterators (one data order each) read in lockstep into [member, batch, ...] batches;
    their states checkpoint together."""

    def __init__(self, iterators: Sequence[Iterator]):
        self.iterators = list(iterators)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batches = [next(it) for it in self.iterators]
        return {k: np.stack([b[k] for b in batches]) for k in batches[0]}

    def get_state(self) -> dict:
        return {"members": [it.get_state() for it in self.iterators]}

    def set_state(self, state: dict) -> None:
        saved = state["members"]
        if len(saved) != len(self.iterators):
            raise ValueError(f"population data state holds {len(saved)} members' iterators, this "
                             f"population has {len(self.iterators)}: it was saved by another "
                             "population")
        for it, s in zip(self.iterators, saved):
            it.set_state(s)
