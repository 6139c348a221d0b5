"""The generic training machinery every stage shares: state, optimiser, sharded step, resumable loop.

State is built as `eval_shape -> shardings -> jit(init, out_shardings)`, so nothing is materialised on
one device first (nanodo, big_vision); the step is jitted with explicit in/out shardings and donates
the old state.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from warm_jax import sharding as shd
from warm_jax.checkpoint import (Checkpointer, NonFiniteError, abstract_with_shardings,  # noqa: F401
                                 path_str)
from warm_jax.fileio import kill_point
from warm_jax.guards import Preempted, preemption_requested
from warm_jax.metrics import MetricsWriter
from warm_jax.progress import progress
from warm_jax.checks import check_range


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32[2] key: checkpoints as a plain array


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and global-norm clipping."""
    learning_rate: float = 1e-3
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    b1: float = 0.9
    b2: float = 0.99
    frozen: tuple[str, ...] = ()  # regexes over parameter paths ('body/.*' = linear probing)

    def __post_init__(self):
        check_range("OptimConfig", "learning_rate", self.learning_rate, 0.0, 10.0, lo_open=True)
        check_range("OptimConfig", "warmup_steps", self.warmup_steps, 0)
        check_range("OptimConfig", "weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("OptimConfig", "grad_clip", self.grad_clip, 0.0, lo_open=True)
        check_range("OptimConfig", "b1", self.b1, 0.0, 1.0)
        check_range("OptimConfig", "b2", self.b2, 0.0, 1.0)
        for p in self.frozen:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"OptimConfig.frozen: bad regex {p!r}: {e}") from None


def _is_box(x) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def trainable_labels(params: Any, frozen: Sequence[str]) -> Any:
    """'train' / 'frozen' per leaf (boxed leaves count as leaves) by regex over the path."""
    def label(path, _):
        name = path_str(path)
        return "frozen" if any(re.fullmatch(p, name) for p in frozen) else "train"
    return jax.tree_util.tree_map_with_path(label, params, is_leaf=_is_box)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """The learning rate sits in the optimiser state (`inject_hyperparams`), so it can be traced."""
    warmup = max(1, cfg.warmup_steps)
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2),
        optax.add_decayed_weights(cfg.weight_decay),
        optax.scale_by_schedule(lambda s: jnp.minimum(1.0, (s + 1) / warmup)),
        optax.inject_hyperparams(optax.scale)(step_size=-cfg.learning_rate),
    )
    if not cfg.frozen:
        return tx
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                 lambda p: trainable_labels(p, cfg.frozen))


def _boxed_state_fn(init_boxed: Callable[[jax.Array], Any], tx: optax.GradientTransformation
                    ) -> Callable[[jax.Array], TrainState]:
    # the key is an argument, not a constant baked into the program: stages initialising the
    # same model with other seeds share one compiled program (and the run's compilation cache)
    def init_boxed_state(rng):
        rng_params, rng_state = jax.random.split(rng)
        params = init_boxed(rng_params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=rng_state)
    return init_boxed_state


def create_train_state(init_boxed: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                       mesh: Mesh, rng: jax.Array) -> tuple[TrainState, TrainState]:
    """Build the sharded state without materialising it anywhere first. Returns (state, shardings).

    `init_boxed(rng)` returns parameters whose leaves are `nn.LogicallyPartitioned`.
    """
    init_boxed_state = _boxed_state_fn(init_boxed, tx)
    shardings = shd.mesh_shardings(jax.eval_shape(init_boxed_state, rng), mesh)
    state = jax.jit(lambda r: nn.meta.unbox(init_boxed_state(r)), out_shardings=shardings)(rng)
    return state, shardings


def plan_state_bytes(init_boxed: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                     axis_sizes: dict[str, int]) -> dict[str, int]:
    """Per-device bytes of parameters and optimiser state on a mesh of `axis_sizes`, computed from
    shapes alone (`eval_shape`): plan a pod-slice run on a laptop."""
    abstract = jax.eval_shape(_boxed_state_fn(init_boxed, tx), jax.random.PRNGKey(0))
    specs = jax.tree.map(lambda s: shd.logical_to_spec(tuple(s)), shd.logical_specs(abstract),
                         is_leaf=lambda x: isinstance(x, PartitionSpec))
    unboxed = nn.meta.unbox(abstract)
    out = {}
    for part in ("params", "opt_state"):
        sub, sub_specs = getattr(unboxed, part), getattr(specs, part)
        out[part] = shd.per_device_bytes(sub, sub_specs, axis_sizes)
        out[part + "_total"] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(sub))
    return out


def state_from_params(params: Any, tx: optax.GradientTransformation, shardings: TrainState,
                      rng: jax.Array) -> TrainState:
    """A fresh optimiser around given (already placed) parameters."""
    def build(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=rng)
    return jax.jit(build, out_shardings=shardings)(params)


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, dict]]


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation):
    """`loss_fn(params, batch, rng) -> (loss, metrics)` becomes `step(state, batch) -> (state, metrics)`."""
    def train_step(state: TrainState, batch):
        rng, key = jax.random.split(state.rng)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=_global_norm(grads))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics
    return train_step


def jit_train_step(train_step, state_shardings: TrainState, mesh: Mesh, batch_example: Mapping,
                   leading: Sequence[str] = ("batch",)):
    batch_sh = {k: shd.batch_sharding(mesh, np.ndim(v), leading) for k, v in batch_example.items()}
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sh),
                   out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())),
                   donate_argnums=0)


def put_batch(batch: Mapping[str, np.ndarray], mesh: Mesh,
              leading: Sequence[str] = ("batch",)) -> dict:
    """Host batch -> global arrays sharded by the leading logical axes (multi-host safe).
    A population batch is [member, batch, ...]: leading=("member", "batch")."""
    return {k: jax.make_array_from_process_local_data(shd.batch_sharding(mesh, np.ndim(v), leading),
                                                      np.asarray(v))
            for k, v in batch.items()}


def fit(*, state: TrainState, state_shardings: TrainState, train_step, mesh: Mesh,
        data_iter: Iterator, num_steps: int, checkpointer: Checkpointer, writer: MetricsWriter,
        meta: dict | None = None, ckpt_every: int = 100, log_every: int = 10,
        keep_steps: Sequence[int] = (), final_meta: Callable[[TrainState], dict] | None = None,
        save_meta: Callable[[TrainState], dict] | None = None,
        leading: Sequence[str] = ("batch",), desc: str = "train") -> TrainState:
    """Run (or resume) to `num_steps`, checkpointing state + data-iterator state together.

    A non-finite loss or gradient norm stops training before anything is saved, so the last good
    checkpoint stays intact. `save_meta(state)` adds metadata to every checkpoint, `final_meta` to
    the last only. On resume the metrics log is rewound to the restored step. After SIGTERM
    (`layout.install_preemption_handler`) the state is saved at the next step and `Preempted` raised.
    """
    meta = dict(meta or {})
    latest = checkpointer.latest_step()
    if latest is not None:
        target = abstract_with_shardings(jax.eval_shape(lambda: state), state_shardings)
        state, saved_meta = checkpointer.restore(latest, target)
        if "data_state" in saved_meta and hasattr(data_iter, "set_state"):
            data_iter.set_state(saved_meta["data_state"])
    start = int(np.max(jax.device_get(state.step)))  # a population carries one step per member
    writer.rewind(start)

    def save(done):
        data_state = data_iter.get_state() if hasattr(data_iter, "get_state") else None
        extra = dict(save_meta(state) if save_meta else {})
        if final_meta and done == num_steps:
            extra.update(final_meta(state))
        checkpointer.save(done, state, dict(meta, data_state=data_state, step=done, **extra))

    step_fn = None
    for step in progress(range(start, num_steps), desc=desc, initial=start, total=num_steps):
        batch = put_batch(next(data_iter), mesh, leading)
        if step_fn is None:
            step_fn = jit_train_step(train_step, state_shardings, mesh, batch, leading)
        state, metrics = step_fn(state, batch)
        metrics = jax.device_get(metrics)
        if not (np.isfinite(metrics["loss"]).all() and np.isfinite(metrics["grad_norm"]).all()):
            raise NonFiniteError(
                f"{desc}: non-finite loss ({metrics['loss']}) or gradient norm "
                f"({metrics['grad_norm']}) at step {step + 1}; last good checkpoint "
                f"{checkpointer.latest_step()} in {checkpointer.directory} is kept")
        done = step + 1
        kill_point("fit.step")
        if done % log_every == 0 or done == num_steps:
            writer.write(done, metrics)
        if done % ckpt_every == 0 or done == num_steps or done in keep_steps:
            save(done)
        elif preemption_requested():
            save(done)
        if preemption_requested() and done < num_steps:
            raise Preempted(f"{desc}: stopped by SIGTERM after saving step {done} in "
                            f"{checkpointer.directory}; rerun the same command to resume")
    return state
