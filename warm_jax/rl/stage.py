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
import logging
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.average.rewards import describe, make_reward_function, normalised
from warm_jax.checkpoint import (Checkpointer, NonFiniteError, abstract_with_shardings,
                                 assign_with_fallback, restore_params)
from warm_jax.layout import (Preempted, RewardSpec, RunLayout, atomic_write, kill_point,
                             preemption_requested, write_jsonl)
from warm_jax.losses import response_logprobs
from warm_jax.metrics import MetricsWriter, progress
from warm_jax.models import (LanguageModel, ModelConfig, RewardModel, SamplingConfig, make_sampler,
                             unbox)
from warm_jax.rl.bon import bon_curve
from warm_jax.rl.reinforce import RLConfig, make_rl, run_chunk
from warm_jax.rm.population import stack

DEFAULT_METHODS = ("single", "warm_M2", "warm_M6", "ens")


def build_reward_function(layout: RunLayout, rm_name: str, method: str, model_cfg: ModelConfig,
                          *, uwo_lambda: float = 1.0, ensemble_impl: str = "auto",
                          base_fingerprint: str | None = None, allow_base_mismatch: bool = False):
    """The reward function `method` (a `RewardSpec`) over `rm/<rm_name>`. With `base_fingerprint`
    (the policy's), its reward models must descend from the same base."""
    spec = RewardSpec.parse(method)
    if spec.is_ensemble:
        loaded = [restore_params(d) for d in layout.member_dirs(rm_name)]
        params, metas = [p for p, _ in loaded], [m for _, m in loaded]
    else:
        path = layout.average(rm_name, spec.average)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"reward {method!r}: no average at {path} "
                                    "(add its M to average_reward_models.m_values)")
        params, meta = restore_params(path)
        metas = [meta]
    if base_fingerprint is not None:
        fps = sorted({str(m.get("base_fingerprint")) for m in metas})
        if fps != [base_fingerprint]:
            msg = (f"reward {method!r} over {layout.rm(rm_name)} descends from base {fps}, the "
                   f"policy from {base_fingerprint}: RL needs one shared pretrained base")
            if not allow_base_mismatch:
                raise ValueError(msg + " (allow_base_mismatch=True overrides)")
            logging.warning("!!! %s — going on because allow_base_mismatch=True !!!", msg)
    return make_reward_function(model_cfg, params, "single" if not spec.is_ensemble else spec.kind,
                                uwo_lambda=uwo_lambda, name=method, ensemble_impl=ensemble_impl)


def _sft(layout: RunLayout):
    return restore_params(layout.checkpoints(layout.sft))


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
              seed: int = 0, ensemble_impl: str = "auto", uwo_lambda: float = 1.0) -> str:
    """Best-of-N from the SFT policy (temperature 1) under each reward; control reward by oracle."""
    layout = RunLayout(workdir)
    out_path = layout.bon(rm_name)
    config = dict(task=task, model_cfg=model_cfg, methods=methods, n_prompts=n_prompts, N=N,
                  seed=seed, uwo_lambda=uwo_lambda)
    with layout.stage(f"best_of_n {rm_name}", os.path.join(layout.rl(rm_name), "bon"), config,
                      outputs=[out_path]):
        if not os.path.exists(out_path):
            _best_of_n(layout, out_path, task, model_cfg, rm_name, methods, n_prompts, N, seed,
                       ensemble_impl, uwo_lambda)
    return out_path


def _best_of_n(layout, out_path, task, model_cfg, rm_name, methods, n_prompts, N, seed,
               ensemble_impl, uwo_lambda) -> None:
    sft_params, sft_meta = _sft(layout)
    prompt, resp, mask = sft_samples(task, model_cfg, sft_params, task.prompts("eval")[:n_prompts],
                                     N, 1.0, seed)
    gold = task.gold_reward(prompt, resp, mask).reshape(-1, N)
    rows = []
    for method in methods:
        fn = build_reward_function(layout, rm_name, method, model_cfg, uwo_lambda=uwo_lambda,
                                   ensemble_impl=ensemble_impl,
                                   base_fingerprint=sft_meta.get("base_fingerprint"))
        proxy = _score(fn, prompt, resp, mask).reshape(-1, N)
        rows += [{"step": row["n"], "method": method, **row,
                  "gold_gain": row["gold"] - float(gold.mean())} for row in bon_curve(proxy, gold)]
    write_jsonl(out_path, rows)


def train_policies(*, workdir: str, task, model_cfg: ModelConfig, rm_name: str = "clean",
                   methods: Sequence[str] = DEFAULT_METHODS, alphas: Sequence[float] = (0.01,),
                   seeds: Sequence[int] = (0,), rl: RLConfig = RLConfig(), num_steps: int = 300,
                   chunk: int = 50, log_every: int = 10, normalise: bool = True,
                   uwo_lambda: float = 1.0, max_new_tokens: int | None = None,
                   eval_prompts: int = 256, ensemble_impl: str = "auto",
                   allow_base_mismatch: bool = False) -> str:
    """RL from the SFT policy, one vmapped program per method over (α × seeds)."""
    layout = RunLayout(workdir)
    for method in methods:
        RewardSpec.parse(method)  # a bad name fails before any work
    shared: dict = {}
    for method in methods:
        mdir = layout.rl_method(rm_name, method)
        config = dict(task=task, model_cfg=model_cfg, method=method, alphas=alphas, seeds=seeds,
                      rl=rl, num_steps=num_steps, chunk=chunk, log_every=log_every,
                      normalise=normalise, uwo_lambda=uwo_lambda, max_new_tokens=max_new_tokens,
                      eval_prompts=eval_prompts)
        with layout.stage(f"rl {rm_name}/{method}", mdir, config):
            if os.path.exists(os.path.join(mdir, "final.jsonl")):
                continue
            if not shared:
                shared.update(_shared_inputs(layout, task, model_cfg, rl, max_new_tokens))
            _train_method(layout, mdir, rm_name, method, task, model_cfg, rl, alphas=alphas,
                          seeds=seeds, num_steps=num_steps, chunk=chunk, log_every=log_every,
                          normalise=normalise, uwo_lambda=uwo_lambda, eval_prompts=eval_prompts,
                          ensemble_impl=ensemble_impl, allow_base_mismatch=allow_base_mismatch,
                          **shared)
    return layout.rl(rm_name)


def _shared_inputs(layout, task, model_cfg, rl, max_new_tokens) -> dict:
    """What every method's RL starts from: the SFT policy, its value init, normalisation samples."""
    sft_params, sft_meta = _sft(layout)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens or task.max_response_len,
                              temperature=rl.temperature, eos_id=task.eos_id, pad_id=task.pad_id)
    rl_prompts = jnp.asarray(task.prompts("rl"))
    vm = RewardModel(model_cfg)
    dummy = jnp.ones((1, 4), jnp.int32)
    value0, _ = assign_with_fallback(sft_params, unbox(vm.init(jax.random.PRNGKey(0), dummy,
                                                                dummy)["params"]))
    norm = sft_samples(task, model_cfg, sft_params, np.asarray(rl_prompts[:256]), 2,
                       rl.temperature, 123)
    return dict(sft_params=sft_params, sft_meta=sft_meta, sampling=sampling,
                rl_prompts=rl_prompts, value0=value0, norm=norm)


GUARDED = ("kl", "pg_loss", "value_loss", "proxy_reward", "return")


def _train_method(layout, mdir, rm_name, method, task, model_cfg, rl, *, alphas, seeds,
                  num_steps, chunk, log_every, normalise, uwo_lambda, eval_prompts,
                  ensemble_impl, allow_base_mismatch, sft_params, sft_meta, sampling, rl_prompts,
                  value0, norm) -> None:
    runs = [(a, s) for a in alphas for s in seeds]
    fn = build_reward_function(layout, rm_name, method, model_cfg, uwo_lambda=uwo_lambda,
                               ensemble_impl=ensemble_impl,
                               base_fingerprint=sft_meta.get("base_fingerprint"),
                               allow_base_mismatch=allow_base_mismatch)
    if normalise:
        norm_p, norm_r, norm_m = (jnp.asarray(x) for x in norm)
        fn = normalised(fn, norm_p, jnp.ones_like(norm_p), norm_r, norm_m)
    init_state, step = make_rl(model_cfg=model_cfg, cfg=rl, sampling=sampling,
                               ref_params=sft_params, reward_fn=fn, prompts_NxP=rl_prompts,
                               oracle=getattr(task, "gold_fn", None))
    state = stack([init_state(sft_params, value0, s, a) for a, s in runs])
    # committed like the chunk's outputs, so that its second call does not compile it again
    state = jax.device_put(state, jax.tree.map(lambda x: x.sharding, state))
    chunk_fn = jax.jit(jax.vmap(lambda st: run_chunk(step, st, chunk)), donate_argnums=0)
    ck = Checkpointer(layout.checkpoints(mdir), max_to_keep=2)
    meta = {"method": method, "reward": describe(fn), "runs": [list(r) for r in runs],
            "rl": dataclasses.asdict(rl), "base_fingerprint": sft_meta.get("base_fingerprint")}
    if ck.latest_step() is not None:
        target = abstract_with_shardings(jax.eval_shape(lambda: state),
                                         jax.tree.map(lambda x: x.sharding, state))
        state, _ = ck.restore(None, target)
    start = int(np.max(jax.device_get(state.step)))
    with MetricsWriter(mdir, "train") as w:
        w.rewind(start)
        for s0 in progress(range(start, num_steps, chunk), desc=f"rl {rm_name}/{method}",
                           total=num_steps // chunk, initial=start // chunk):
            state, metrics = chunk_fn(state)
            metrics = jax.device_get(metrics)
            bad = [k for k in GUARDED if k in metrics and not np.isfinite(metrics[k]).all()]
            if bad:
                raise NonFiniteError(
                    f"rl {rm_name}/{method}: non-finite {bad} in steps {s0 + 1}..{s0 + chunk}; "
                    f"last good checkpoint {ck.latest_step()} in {ck.directory} is kept")
            _log(w, metrics, runs, s0, log_every, method, task)
            kill_point("rl.chunk")
            ck.save(s0 + chunk, state, meta)
            if preemption_requested() and s0 + chunk < num_steps:
                raise Preempted(f"rl {rm_name}/{method}: stopped by SIGTERM after saving step "
                                f"{s0 + chunk}; rerun the same command to resume")
    _final_eval(mdir, task, model_cfg, state, runs, sft_params, sampling, eval_prompts,
                method, fn)


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
    toks, masks, rows = {}, {}, []
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
        rows.append({"step": int(state.step[i]), **row})
        toks[f"a{alpha}_s{seed}"] = np.asarray(out.tokens_BxN)
        masks[f"a{alpha}_s{seed}"] = np.asarray(out.mask_BxN)
    atomic_write(os.path.join(mdir, "eval_samples.npz"),
                 lambda f: np.savez(f, prompts=np.asarray(prompts),
                                    **{f"tokens/{k}": v for k, v in toks.items()},
                                    **{f"mask/{k}": v for k, v in masks.items()}))
    write_jsonl(os.path.join(mdir, "final.jsonl"), rows)  # last: it marks the method done
