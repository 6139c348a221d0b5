"""Stages: best-of-N, and RL of the SFT policy against each reward function at several α and seeds.

Reward functions are built from `<workdir>/rm/<rm_name>/`: `single` is the best member (top-1
average), `warm_M<k>` the WARM averages, `ens` / `wco` / `uwo` the members' ensembles. Every
method's rewards are z-normalised on SFT samples unless `normalise=False`; the shift and scale are
written with the run (reward scale sets the effective α).

Writes `<workdir>/rl/<rm_name>/bon.jsonl` and, per method, `rl/<rm_name>/<method>/`:
  checkpoints/ (all runs of the method, stacked), train.jsonl (one row per run and logged step),
  final.jsonl (evaluation on held-out prompts), eval_samples.npz (responses for win rates).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.average.rewards import describe, make_reward_function, normalised
from warm_jax.average.stage import member_dirs
from warm_jax.checkpoint import (Checkpointer, abstract_with_shardings, assign_with_fallback,
                                 restore_params)
from warm_jax.losses import response_logprobs
from warm_jax.metrics import MetricsWriter, progress
from warm_jax.models import (LanguageModel, ModelConfig, RewardModel, SamplingConfig, make_sampler,
                             unbox)
from warm_jax.rl.bon import bon_curve
from warm_jax.rl.reinforce import RLConfig, make_rl, run_chunk
from warm_jax.rm.population import stack

DEFAULT_METHODS = ("single", "warm_M2", "warm_M6", "ens")


def build_reward_function(rm_dir: str, method: str, model_cfg: ModelConfig, *,
                          uwo_lambda: float = 1.0, ensemble_impl: str = "vmap"):
    if method == "single":
        return make_reward_function(model_cfg, restore_params(
            os.path.join(rm_dir, "averages", "warm_M1"))[0], name=method)
    if method.startswith("warm_") or method == "greedy":
        path = os.path.join(rm_dir, "averages", method)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"reward {method!r}: no average at {path} "
                                    "(add its M to average_reward_models.m_values)")
        return make_reward_function(model_cfg, restore_params(path)[0], name=method)
    if method in ("ens", "wco", "uwo"):
        members = [restore_params(d)[0] for d in member_dirs(rm_dir)]
        return make_reward_function(model_cfg, members, method, uwo_lambda=uwo_lambda,
                                    name=method, ensemble_impl=ensemble_impl)
    raise ValueError(f"reward method {method!r}: allowed single, warm_M<k>, greedy, ens, wco, uwo")


def _sft(workdir):
    params, meta = restore_params(os.path.join(workdir, "sft", "checkpoints"))
    return params, meta


def sft_samples(task, model_cfg, sft_params, prompts, n_per_prompt, temperature, seed):
    lm = LanguageModel(model_cfg)
    sampling = SamplingConfig(max_new_tokens=task.max_response_len, temperature=temperature,
                              eos_id=task.eos_id, pad_id=task.pad_id)
    sample = jax.jit(make_sampler(lm, sampling))
    prompt = jnp.repeat(jnp.asarray(prompts), n_per_prompt, axis=0)
    outs = [sample(sft_params, prompt[i:i + 1024], jnp.ones_like(prompt[i:i + 1024]),
                   jax.random.PRNGKey(seed + i)) for i in range(0, len(prompt), 1024)]
    return (prompt, np.concatenate([np.asarray(o.tokens_BxN) for o in outs]),
            np.concatenate([np.asarray(o.mask_BxN) for o in outs]))


def _score(fn, prompt, resp, mask, batch=1024):
    call = jax.jit(lambda f, *a: f(*a))
    return np.concatenate([np.asarray(call(fn, prompt[i:i + batch], jnp.ones_like(prompt[i:i + batch]),
                                           resp[i:i + batch], mask[i:i + batch]))
                           for i in range(0, len(prompt), batch)])


def best_of_n(*, workdir: str, task, model_cfg: ModelConfig, rm_name: str = "clean",
              methods: Sequence[str] = DEFAULT_METHODS, n_prompts: int = 128, N: int = 64,
              seed: int = 0, ensemble_impl: str = "vmap") -> str:
    """Best-of-N from the SFT policy (temperature 1) under each reward; control reward by oracle."""
    out_path = os.path.join(workdir, "rl", rm_name, "bon.jsonl")
    if os.path.exists(out_path):
        return out_path
    rm_dir = os.path.join(workdir, "rm", rm_name)
    sft_params, _ = _sft(workdir)
    prompt, resp, mask = sft_samples(task, model_cfg, sft_params, task.prompts("eval")[:n_prompts],
                                     N, 1.0, seed)
    gold = task.gold_reward(prompt, resp, mask).reshape(-1, N)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with MetricsWriter(os.path.dirname(out_path), "bon_tmp", tensorboard=False) as w:
        for method in methods:
            fn = build_reward_function(rm_dir, method, model_cfg, ensemble_impl=ensemble_impl)
            proxy = _score(fn, prompt, resp, mask).reshape(-1, N)
            for row in bon_curve(proxy, gold):
                w.write(row["n"], {"method": method, **row,
                                   "gold_gain": row["gold"] - float(gold.mean())})
    os.replace(w.path, out_path)
    return out_path


def train_policies(*, workdir: str, task, model_cfg: ModelConfig, rm_name: str = "clean",
                   methods: Sequence[str] = DEFAULT_METHODS, alphas: Sequence[float] = (0.01,),
                   seeds: Sequence[int] = (0,), rl: RLConfig = RLConfig(), num_steps: int = 300,
                   chunk: int = 50, log_every: int = 10, normalise: bool = True,
                   uwo_lambda: float = 1.0, max_new_tokens: int | None = None,
                   eval_prompts: int = 256, ensemble_impl: str = "vmap") -> str:
    """RL from the SFT policy, one vmapped program per method over (α × seeds)."""
    rl_dir = os.path.join(workdir, "rl", rm_name)
    rm_dir = os.path.join(workdir, "rm", rm_name)
    sft_params, sft_meta = _sft(workdir)
    oracle = getattr(task, "gold_fn", None)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens or task.max_response_len,
                              temperature=rl.temperature, eos_id=task.eos_id, pad_id=task.pad_id)
    rl_prompts = jnp.asarray(task.prompts("rl"))
    vm = RewardModel(model_cfg)
    dummy = jnp.ones((1, 4), jnp.int32)
    value0, _ = assign_with_fallback(sft_params, unbox(vm.init(jax.random.PRNGKey(0), dummy,
                                                                dummy)["params"]))
    runs = [(a, s) for a in alphas for s in seeds]
    norm_p, norm_r, norm_m = sft_samples(task, model_cfg, sft_params, np.asarray(rl_prompts[:256]),
                                         2, rl.temperature, 123)
    for method in methods:
        mdir = os.path.join(rl_dir, method)
        if os.path.exists(os.path.join(mdir, "final.jsonl")):
            continue
        fn = build_reward_function(rm_dir, method, model_cfg, uwo_lambda=uwo_lambda,
                                   ensemble_impl=ensemble_impl)
        if normalise:
            fn = normalised(fn, jnp.asarray(norm_p), jnp.ones_like(jnp.asarray(norm_p)),
                            jnp.asarray(norm_r), jnp.asarray(norm_m))
        init_state, step = make_rl(model_cfg=model_cfg, cfg=rl, sampling=sampling,
                                   ref_params=sft_params, reward_fn=fn, prompts_NxP=rl_prompts,
                                   oracle=oracle)
        state = stack([init_state(sft_params, value0, s, a) for a, s in runs])
        chunk_fn = jax.jit(jax.vmap(lambda st: run_chunk(step, st, chunk)), donate_argnums=0)
        ck = Checkpointer(os.path.join(mdir, "checkpoints"), max_to_keep=2)
        meta = {"method": method, "reward": describe(fn), "runs": [list(r) for r in runs],
                "rl": dataclasses.asdict(rl), "base_fingerprint": sft_meta.get("base_fingerprint")}
        if ck.latest_step() is not None:
            target = abstract_with_shardings(jax.eval_shape(lambda: state),
                                             jax.tree.map(lambda x: x.sharding, state))
            state, _ = ck.restore(None, target)
        start = int(np.max(jax.device_get(state.step)))
        with MetricsWriter(mdir, "train") as w:
            for s0 in progress(range(start, num_steps, chunk), desc=f"rl {rm_name}/{method}",
                               total=num_steps // chunk, initial=start // chunk):
                state, metrics = chunk_fn(state)
                _log(w, jax.device_get(metrics), runs, s0, log_every, method, task)
                ck.save(s0 + chunk, state, meta)
        _final_eval(mdir, task, model_cfg, state, runs, sft_params, sampling, eval_prompts,
                    method, fn)
    return rl_dir


def _log(w, metrics, runs, s0, log_every, method, task):
    """metrics: R x C x ...; rows every `log_every` steps with a decoded sample."""
    R, C = metrics["kl"].shape
    for c in range(C):
        step = s0 + c + 1
        if step % log_every:
            continue
        for r, (alpha, seed) in enumerate(runs):
            row = {k: float(v[r, c]) for k, v in metrics.items() if np.ndim(v[r, c]) == 0}
            row.update(method=method, run_alpha=alpha, seed=seed,
                       sample=task.decode(metrics["sample_tokens"][r, c, 0],
                                          metrics["sample_mask"][r, c, 0]))
            w.write(step, row)


def _final_eval(mdir, task, model_cfg, state, runs, sft_params, sampling, n, method, fn):
    """Held-out evaluation of each final policy: control reward, KL to SFT, samples for win rates."""
    lm = LanguageModel(model_cfg)
    prompts = jnp.asarray(task.prompts("eval")[:n])
    sample = jax.jit(make_sampler(lm, sampling))
    score = jax.jit(lambda p, r, m: response_logprobs(lm, p, prompts, r, m, sampling.temperature))
    toks, masks = {}, {}
    with MetricsWriter(mdir, "final_tmp", tensorboard=False) as w:
        for i, (alpha, seed) in enumerate(runs):
            params = jax.tree.map(lambda x: x[i], state.policy)
            out = sample(params, prompts, jnp.ones_like(prompts), jax.random.PRNGKey(10_000 + seed))
            kl = (score(params, out.tokens_BxN, out.mask_BxN) -
                  score(sft_params, out.tokens_BxN, out.mask_BxN)).sum(-1)
            row = {"method": method, "run_alpha": alpha, "seed": seed, "kl": float(kl.mean()),
                   "reward_shift": float(fn.shift), "reward_scale": float(fn.scale),
                   "proxy_reward": float(np.mean(_score(fn, prompts, out.tokens_BxN,
                                                        out.mask_BxN))),
                   "length": float(out.mask_BxN.sum(-1).mean())}
            if getattr(task, "has_oracle", False):
                gold = task.gold_reward(prompts, out.tokens_BxN, out.mask_BxN)
                row["control_reward"] = float(np.mean(gold))
                # per prompt, so that win rates need nothing but this file
                row["gold_per_prompt"] = [round(float(g), 5) for g in gold]
            w.write(int(state.step[i]), row)
            toks[f"a{alpha}_s{seed}"] = np.asarray(out.tokens_BxN)
            masks[f"a{alpha}_s{seed}"] = np.asarray(out.mask_BxN)
    np.savez(os.path.join(mdir, "eval_samples.npz"), prompts=np.asarray(prompts),
             **{f"tokens/{k}": v for k, v in toks.items()},
             **{f"mask/{k}": v for k, v in masks.items()})
    os.replace(w.path, os.path.join(mdir, "final.jsonl"))
