"""The RL step of the demo against the CPU's peak: achieved FLOP rate of the policy-gradient step
as the RL stage runs it (5 runs vmapped, 25 steps per `lax.scan` chunk, the toy policy, batch 64).

Keys: rl_step_ms (one step of the 5 vmapped runs, in a chunk), rl_step_model_gflop (model FLOPs
of that step), rl_step_gflops (achieved), cpu_peak_gflops (fp32), rl_step_flops_over_peak.

Model FLOPs follow PaLM's convention (appendix B): 2·N per token for a forward pass, 6·N for forward
and backward, N the matmul parameters (embeddings included, as the toy's output layer is tied),
attention's QK/AV products added; per run and step: sampling (prompt + response), the reference
policy's and the reward model's forward passes, the value head's forward and backward on the
prompt, the policy's forward and backward on prompt + response. The peak is cores × clock ×
FLOP/cycle: 64 fp32 FLOP/cycle/core for two AVX-512 FMA units (`--flop_per_cycle` to change it);
the clock is /proc/cpuinfo's."""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.data.toy import ToyTask, ToyTaskConfig
from warm_jax.models import (LanguageModel, RewardModel, SamplingConfig, preset, unbox)
from warm_jax.rl.reinforce import RLConfig, make_rl, run_chunk
from warm_jax.rm.population import stack

RUNS, CHUNK = 5, 25   # the default demo: five chain seeds in one vmapped program, chunk 25


def cpu_peak_gflops(flop_per_cycle: int = 64) -> tuple[float, float]:
    mhz = [float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")]
    ghz = max(mhz) / 1000 if mhz else float("nan")
    return os.cpu_count() * ghz * flop_per_cycle, ghz


def model_flops(cfg, n_params: int, B: int, P: int, R: int) -> float:
    T = P + R
    attn = 2 * 2 * cfg.n_layers * cfg.d_model * T * T / 2   # QK^T and AV, causal half
    fwd = lambda tokens: 2 * n_params * tokens              # noqa: E731
    per_seq = (fwd(T) + attn              # sampling (prefill + decode, KV cache)
               + fwd(T) + attn            # reference log-probs
               + fwd(T) + attn            # reward model
               + 3 * (fwd(P))             # value head forward + backward on the prompt
               + 3 * (fwd(T) + attn))     # policy forward + backward
    return B * per_seq


def run(quick: bool = True, flop_per_cycle: int = 64) -> dict:
    task = ToyTask(ToyTaskConfig())
    cfg = preset("toy")
    rl = RLConfig(batch_size=64, learning_rate=2e-4)
    prompts = jnp.asarray(task.prompts("rl"))
    P, R = prompts.shape[1], task.max_response_len
    lm, rm = LanguageModel(cfg), RewardModel(cfg)
    dummy = jnp.ones((1, P), jnp.int32)
    policy = unbox(lm.init(jax.random.PRNGKey(0), dummy)["params"])
    value = unbox(rm.init(jax.random.PRNGKey(1), dummy, dummy)["params"])
    rm_params = stack([unbox(rm.init(jax.random.PRNGKey(2 + r), dummy, dummy)["params"])
                       for r in range(RUNS)])
    sampling = SamplingConfig(max_new_tokens=R, temperature=rl.temperature, eos_id=task.eos_id,
                              pad_id=task.pad_id)
    init_state, step = make_rl(model_cfg=cfg, cfg=rl, sampling=sampling, ref_params=policy,
                               prompts_NxP=prompts, oracle=task.gold_fn)

    def reward(p):   # one run's reward function: its own reward model
        return lambda prompt, pmask, resp, rmask: rm.apply(
            {"params": p}, jnp.concatenate([prompt, resp], 1), jnp.concatenate([pmask, rmask], 1))

    chunk = jax.jit(jax.vmap(lambda st, p: run_chunk(step, st, CHUNK, reward(p))))
    state = stack([init_state(policy, value, s, 0.001) for s in range(RUNS)])
    state, _ = jax.block_until_ready(chunk(state, rm_params))   # compile + warm up
    times = []
    for _ in range(2 if quick else 5):
        t0 = time.perf_counter()
        state, m = jax.block_until_ready(chunk(state, rm_params))
        times.append((time.perf_counter() - t0) / CHUNK)
    step_s = float(np.median(times))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(policy))
    gflop = RUNS * model_flops(cfg, n_params, rl.batch_size, P, R) / 1e9
    peak, ghz = cpu_peak_gflops(flop_per_cycle)
    return {"rl_step_ms": round(1e3 * step_s, 2), "rl_step_model_gflop": round(gflop, 4),
            "rl_step_gflops": round(gflop / step_s, 3), "cpu_peak_gflops": round(peak, 1),
            "cpu_peak_basis": f"{os.cpu_count()} cores x {ghz:.2f} GHz x {flop_per_cycle} "
                              "fp32 FLOP/cycle",
            "rl_step_flops_over_peak": round(gflop / step_s / peak, 5),
            "rl_policy_params": n_params}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.bench_rl")
    ap.add_argument("--flop_per_cycle", type=int, default=64)
    print(run(quick=False, flop_per_cycle=ap.parse_args().flop_per_cycle))
