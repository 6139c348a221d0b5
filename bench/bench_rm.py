"""M = 6 reward models on the toy task's RM size: one vmapped population vs six sequential runs.

Keys (same steps, same batches):
  population_speedup          steady-state step time, compilation excluded (goal >= 3)
  population_speedup_with_compile   each sequential run compiles its own program, as six separate
                                    launches do; the population compiles once
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.data.pipeline import batch_iterator
from warm_jax.data.toy import ToyTask, ToyTaskConfig
from warm_jax.models import RewardModel, preset, unbox
from warm_jax.rm.loss import PAIR_KEYS, make_rm_loss
from warm_jax.rm.population import (make_member_step, member_state, population_step,
                                    single_run_step, stack)
from warm_jax.train import OptimConfig, make_optimizer


def run(quick: bool = True) -> dict:
    M, steps, B = 6, (30 if quick else 150), 32
    cfg = preset("toy")
    task = ToyTask(ToyTaskConfig(n_rm_train=2000))
    cols = {k: v for k, v in task.preference_split("train").items() if k in PAIR_KEYS}
    rm = RewardModel(cfg)
    dummy = jnp.ones((1, 4), jnp.int32)
    params = unbox(rm.init(jax.random.PRNGKey(0), dummy, dummy)["params"])
    tx = make_optimizer(OptimConfig(learning_rate=1.0))
    step = make_member_step(make_rm_loss(rm), tx)
    lrs, drops = [1e-4, 3e-4, 1e-3] * 2, [0.0, 0.1] * 3
    states = [member_state(params, tx, lrs[i], i) for i in range(M)]
    batches = [[next(it) for _ in range(steps)]
               for it in (batch_iterator(cols, batch_size=B, seed=i) for i in range(M))]

    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731  (donation consumes inputs)
    t_seq, t_compile_seq = 0.0, 0.0
    for m in range(M):
        t0 = time.perf_counter()
        single = jax.jit(single_run_step(step, drops[m]), donate_argnums=0)
        jax.block_until_ready(single(copy(states[m]), batches[m][0])[0])  # compile (+1 step)
        t_compile_seq += time.perf_counter() - t0
        t0 = time.perf_counter()
        s = copy(states[m])
        for b in batches[m]:
            s, metrics = single(s, b)
        jax.block_until_ready(s)
        t_seq += time.perf_counter() - t0

    pop_batches = [{k: np.stack([batches[m][t][k] for m in range(M)]) for k in PAIR_KEYS}
                   for t in range(steps)]
    t_pop, t_compile_pop = {}, {}
    for impl in ("vmap", "map"):
        pop = jax.jit(population_step(step, drops, impl), donate_argnums=0)
        t0 = time.perf_counter()
        jax.block_until_ready(pop(stack(states), pop_batches[0])[0])  # compile (+1 step)
        t_compile_pop[impl] = time.perf_counter() - t0
        t0 = time.perf_counter()
        p = stack(states)
        for b in pop_batches:
            p, metrics = pop(p, b)
        jax.block_until_ready(p)
        t_pop[impl] = time.perf_counter() - t0
    return {"population_speedup": round(t_seq / t_pop["vmap"], 2),
            "population_speedup_with_compile": round((t_seq + t_compile_seq) /
                                                     (t_pop["vmap"] + t_compile_pop["vmap"]), 2),
            "population_map_speedup": round(t_seq / t_pop["map"], 2),
            "population_map_speedup_with_compile": round((t_seq + t_compile_seq) /
                                                         (t_pop["map"] + t_compile_pop["map"]), 2),
            "population_step_ms": round(1000 * t_pop["vmap"] / steps, 2),
            "sequential_member_step_ms": round(1000 * t_seq / (M * steps), 2)}


if __name__ == "__main__":
    print(run())
