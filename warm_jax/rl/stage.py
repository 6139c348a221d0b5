"""Stages: best-of-N, and RL of the SFT policy against each reward function at several α and seeds.

Reward functions are built from `<workdir>/rm/<rm_name>/`: `single` is the best member (top-1
average), `warm_M<k>` the WARM averages, `ens` / `wco` / `uwo` the members' ensembles (`ens_M<k>`:
of the k members `warm_M<k>` averages). Every method's rewards are z-normalised on SFT samples
unless `normalise=False`; the shift and scale are written with the run (reward scale sets the
effective α).

Writes `<workdir>/rl/<rm_name>/bon.jsonl` and, per method, `rl/<rm_name>/<method>/`:
  checkpoints/ (all runs of the method, stacked), train.jsonl (one row per run and logged step),
  final.jsonl (evaluation on held-out prompts), eval_samples.npz (responses for win rates).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.average.rewards import (aggregate, describe, make_reward_function, member_call,
                                      normalised, score_call, standardised_members)
from warm_jax.checkpoint import (Checkpointer, NonFiniteError, abstract_with_shardings,
                                 assign_with_fallback, restore_params)
from warm_jax.eval.evidence import auc_log2, bon_unbiased
from warm_jax.layout import (Preempted, RewardSpec, RunLayout, atomic_write, chain, chain_seed,
                             check_seeds, kill_point, preemption_requested, write_jsonl)
from warm_jax.metrics import MetricsWriter
from warm_jax.progress import progress
from warm_jax.models import ModelConfig, RewardModel, SamplingConfig, jitted_sampler, unbox
from warm_jax.rl.bon import kl_bon
from warm_jax.rl.heldout import eval_rows, make_eval
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
        dirs = layout.member_dirs(rm_name)
        loaded = [restore_params(dirs[i]) for i in ensemble_members(layout, rm_name, spec)]
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


def ensemble_members(layout: RunLayout, rm_name: str, spec: RewardSpec) -> list[int]:
    """The member indices an ensemble reads: all of them, or for `ens_M<k>` the k members of
    `warm_M<k>` (its metadata's `member_indices`), so ENS M=k and WARM M=k share their members."""
    n = len(layout.member_dirs(rm_name))
    if spec.average is None:
        return list(range(n))
    path = layout.average(rm_name, spec.average)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"reward {spec}: no average at {path} to take its members from "
                                f"(add {spec.m} to average_reward_models.m_values)")
    return [int(i) for i in Checkpointer(path, read_only=True).restore_meta()["member_indices"]]


def _sft(layout: RunLayout):
    return restore_params(layout.checkpoints(layout.sft))


def sft_samples(task, model_cfg, sft_params, prompts, n_per_prompt, temperature, seed):
    sampling = SamplingConfig(max_new_tokens=task.max_response_len, temperature=temperature,
                              eos_id=task.eos_id, pad_id=task.pad_id)
    sample = jitted_sampler(model_cfg, sampling)
    prompt = jnp.repeat(jnp.asarray(prompts), n_per_prompt, axis=0)
    outs = [sample(sft_params, prompt[i:i + 1024], jnp.ones_like(prompt[i:i + 1024]),
                   jax.random.PRNGKey(seed + i)) for i in range(0, len(prompt), 1024)]
    return (prompt, np.concatenate([np.asarray(o.tokens_BxN) for o in outs]),
            np.concatenate([np.asarray(o.mask_BxN) for o in outs]))


def _score(fn, prompt, resp, mask, batch=1024):
    call = score_call
    return np.concatenate([np.asarray(call(fn, prompt[i:i + batch], jnp.ones_like(prompt[i:i + batch]),
                                           resp[i:i + batch], mask[i:i + batch]))
                           for i in range(0, len(prompt), batch)])


BON_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def best_of_n(*, workdir: str, task, model_cfg: ModelConfig, rm_name: str = "clean",
              methods: Sequence[str] = DEFAULT_METHODS, seeds: Sequence[int] = (0,),
              n_prompts: int = 128, N: int = 64, seed: int = 0, ensemble_impl: str = "auto",
              uwo_lambda: float = 0.5, standardise_members: bool = True) -> str:
    """Best-of-n from the SFT policy (temperature 1) under each reward, for every chain seed (its
    own N samples per prompt and its own reward models); control reward by the oracle, with the
    unbiased estimator for every n ≤ N in BON_NS. Rows: the mean curve per (seed, method), and per
    (seed, method) the per-prompt area under the control-reward gain over log2 n (`auc` rows, what
    the claims are decided on). WCO / UWO members are standardised on these SFT samples first."""
    seeds = check_seeds("best_of_n", seeds)
    layout = RunLayout(workdir)
    out_path = layout.bon(rm_name)
    config = dict(task=task, model_cfg=model_cfg, methods=methods, n_prompts=n_prompts, N=N,
                  seed=seed, uwo_lambda=uwo_lambda, seeds=seeds,
                  standardise_members=standardise_members)
    with layout.stage(f"best_of_n {rm_name}", os.path.join(layout.rl(rm_name), "bon"), config,
                      outputs=[out_path]):
        if not os.path.exists(out_path):
            rows = []
            for s in progress(seeds, desc=f"best_of_n {rm_name}"):
                rows += _best_of_n(layout, task, model_cfg, rm_name, methods, n_prompts, N,
                                   chain_seed(seed, s), s, ensemble_impl, uwo_lambda,
                                   standardise_members)
            write_jsonl(out_path, rows)
    return out_path


def _best_of_n(layout, task, model_cfg, rm_name, methods, n_prompts, N, sample_seed, s,
               ensemble_impl, uwo_lambda, standardise_members) -> list[dict]:
    sft_params, sft_meta = _sft(layout)
    prompt, resp, mask = sft_samples(task, model_cfg, sft_params, task.prompts("eval")[:n_prompts],
                                     N, 1.0, sample_seed)
    gold_PxN = task.gold_reward(prompt, resp, mask).reshape(-1, N)
    ns = [n for n in BON_NS if n <= N]
    rows, members_MxB = [], None
    for method in methods:
        spec = RewardSpec.parse(method)
        if spec.is_ensemble:   # the members are scored once; ENS / WCO / UWO aggregate them
            if members_MxB is None:
                ens = build_reward_function(layout, chain(rm_name, s), "ens", model_cfg,
                                            ensemble_impl=ensemble_impl,
                                            base_fingerprint=sft_meta.get("base_fingerprint"))
                members_MxB = _score_members(ens, prompt, resp, mask)
            r_MxB = members_MxB[ensemble_members(layout, chain(rm_name, s), spec)]
            if standardise_members and spec.kind in ("wco", "uwo"):
                r_MxB = (r_MxB - r_MxB.mean(1, keepdims=True)) / np.maximum(
                    r_MxB.std(1, keepdims=True), 1e-6)
            proxy = np.asarray(aggregate(jnp.asarray(r_MxB), spec.kind, uwo_lambda))
        else:
            fn = build_reward_function(layout, chain(rm_name, s), method, model_cfg,
                                       base_fingerprint=sft_meta.get("base_fingerprint"))
            proxy = _score(fn, prompt, resp, mask)
        proxy_PxN = proxy.reshape(-1, N)
        control_PxK = bon_unbiased(proxy_PxN, gold_PxN, ns)
        for k, n in enumerate(ns):
            g = float(control_PxK[:, k].mean())
            rows.append({"step": n, "seed": s, "method": method, "n": n, "kl_bon": kl_bon(n),
                         "gold": g, "gold_gain": g - float(gold_PxN.mean())})
        rows.append({"step": 0, "seed": s, "method": method, "analysis": "auc", "ns": ns,
                     "values": [round(float(v), 5) for v in auc_log2(ns, control_PxK)]})
    return rows


def _score_members(fn, prompt, resp, mask, batch=1024):
    """Raw member rewards, M x B."""
    return np.concatenate([np.asarray(member_call(fn, prompt[i:i + batch],
                                                  jnp.ones_like(prompt[i:i + batch]),
                                                  resp[i:i + batch], mask[i:i + batch]))
                           for i in range(0, len(prompt), batch)], 1)


def train_policies(*, workdir: str, task, model_cfg: ModelConfig, rm_name: str = "clean",
                   methods: Sequence[str] = DEFAULT_METHODS, alphas: Sequence[float] = (0.01,),
                   seeds: Sequence[int] = (0,), rl: RLConfig = RLConfig(), num_steps: int = 300,
                   chunk: int = 50, log_every: int = 10, normalise: bool = True,
                   uwo_lambda: float = 0.1, standardise_members: bool = True,
                   max_new_tokens: int | None = None, eval_prompts: int = 256,
                   ensemble_impl: str = "auto", allow_base_mismatch: bool = False,
                   sweep_methods: Sequence[str] = (), sweep_alphas: Sequence[float] = (),
                   sweep_seeds: Sequence[int] = (), eval_split: str = "eval") -> str:
    """RL from the SFT policy, one vmapped program per method over (α × chain seeds): run (α, s)
    optimises the reward models of chain seed s. Every `chunk` steps (and at step 0) each run is
    evaluated on held-out prompts (`eval.jsonl`: control reward per prompt, KL to the SFT policy),
    the first `eval_prompts` of the task's `eval_split` prompts.
    An α sweep: the `sweep_methods` run at every α of `sweep_alphas`, the others at `alphas`;
    with `sweep_seeds`, a sweep α that is not in `alphas` runs for those chain seeds only."""
    seeds = check_seeds("train_policies", seeds)
    if sweep_seeds:
        sweep_seeds = check_seeds("train_policies.sweep_seeds", sweep_seeds)
        outside = sorted(set(sweep_seeds) - set(seeds))
        if outside:
            raise ValueError(f"train_policies.sweep_seeds {outside} are not among seeds {seeds}")
    layout = RunLayout(workdir)
    for method in methods:
        RewardSpec.parse(method)  # a bad name fails before any work
    unknown = sorted(set(sweep_methods) - set(methods))
    if unknown:
        raise ValueError(f"train_policies.sweep_methods: {unknown} not in methods {list(methods)}")
    if sweep_methods and not sweep_alphas:
        raise ValueError("train_policies: sweep_methods given without sweep_alphas")
    for name, a in (("alphas", alphas), ("sweep_alphas", sweep_alphas)):
        if any(not 0 <= float(x) < float("inf") for x in a) or len(set(a)) != len(a):
            raise ValueError(f"train_policies.{name} must be distinct, finite and >= 0; got "
                             f"{tuple(a)}")
    if not alphas:
        raise ValueError("train_policies.alphas is empty")
    if num_steps < 1 or chunk < 1 or num_steps % chunk:
        raise ValueError(f"train_policies.num_steps={num_steps} must be a positive multiple of "
                         f"chunk={chunk}")
    shared: dict = {}
    for method in methods:
        mdir = layout.rl_method(rm_name, method)
        m_alphas = tuple(sweep_alphas if method in sweep_methods else alphas)
        runs = [(a, s) for a in m_alphas for s in
                (sweep_seeds if sweep_seeds and a not in alphas else seeds)]
        config = dict(task=task, model_cfg=model_cfg, method=method, alphas=m_alphas, seeds=seeds,
                      rl=rl, num_steps=num_steps, chunk=chunk, log_every=log_every,
                      normalise=normalise, uwo_lambda=uwo_lambda, max_new_tokens=max_new_tokens,
                      eval_prompts=eval_prompts, standardise_members=standardise_members)
        if eval_split != "eval":   # only when set: earlier runs' recorded configs still match
            config["eval_split"] = eval_split
        if sweep_seeds and method in sweep_methods:
            config["runs"] = runs
        with layout.stage(f"rl {rm_name}/{method}", mdir, config):
            if os.path.exists(os.path.join(mdir, "final.jsonl")):
                continue
            if not shared:
                shared.update(shared_inputs(layout, task, model_cfg, rl, max_new_tokens))
            train_runs(layout, mdir, rm_name, method, task, model_cfg, rl, alphas=m_alphas,
                          seeds=seeds, num_steps=num_steps, chunk=chunk, log_every=log_every,
                          normalise=normalise, uwo_lambda=uwo_lambda, eval_prompts=eval_prompts,
                          standardise_members=standardise_members,
                          ensemble_impl=ensemble_impl, allow_base_mismatch=allow_base_mismatch,
                          eval_split=eval_split, runs=runs, **shared)
    return layout.rl(rm_name)


def shared_inputs(layout, task, model_cfg, rl, max_new_tokens) -> dict:
    """What every method's RL (and WARP, `warp_stage`) starts from: the SFT policy, its value
    init, normalisation samples."""
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


def seed_rewards(layout, rm_name, method, model_cfg, seeds, *, sft_meta, norm, normalise,
                 standardise_members, uwo_lambda, ensemble_impl, allow_base_mismatch) -> dict:
    """{chain seed: the reward function `method` over that seed's reward models}, with WCO / UWO
    members standardised and the whole z-normalised on the SFT samples `norm` where asked."""
    norm_p, norm_r, norm_m = (jnp.asarray(x) for x in norm)
    fns = {}
    for s in seeds:
        fn = build_reward_function(layout, chain(rm_name, s), method, model_cfg,
                                   uwo_lambda=uwo_lambda, ensemble_impl=ensemble_impl,
                                   base_fingerprint=sft_meta.get("base_fingerprint"),
                                   allow_base_mismatch=allow_base_mismatch)
        if standardise_members and fn.kind in ("wco", "uwo"):
            fn = standardised_members(fn, norm_p, jnp.ones_like(norm_p), norm_r, norm_m)
        if normalise:
            fn = normalised(fn, norm_p, jnp.ones_like(norm_p), norm_r, norm_m)
        fns[s] = fn
    return fns


def train_runs(layout, mdir, rm_name, method, task, model_cfg, rl, *, alphas, seeds,
               num_steps, chunk, log_every, normalise, uwo_lambda, eval_prompts,
               standardise_members, ensemble_impl, allow_base_mismatch, sft_params, sft_meta,
               sampling, rl_prompts, value0, norm, eval_split="eval", runs=None) -> None:
    """The (α, seed) runs of one reward `method` in `mdir` (all of α × seeds, or `runs`), one
    vmapped program, resumed from its checkpoints; writes train.jsonl, eval.jsonl (every `chunk`
    steps), final.jsonl last."""
    runs = [(a, s) for a in alphas for s in seeds] if runs is None else [tuple(r) for r in runs]
    fns = seed_rewards(layout, rm_name, method, model_cfg, seeds, sft_meta=sft_meta, norm=norm,
                       normalise=normalise, standardise_members=standardise_members,
                       uwo_lambda=uwo_lambda, ensemble_impl=ensemble_impl,
                       allow_base_mismatch=allow_base_mismatch)
    fn_R = stack([fns[s] for _, s in runs])   # run r optimises its chain seed's reward
    init_state, step = make_rl(model_cfg=model_cfg, cfg=rl, sampling=sampling,
                               ref_params=sft_params, prompts_NxP=rl_prompts,
                               oracle=getattr(task, "gold_fn", None))
    state = stack([init_state(sft_params, value0, s, a) for a, s in runs])
    # committed like the chunk's outputs, so that its second call does not compile it again
    state = jax.device_put(state, jax.tree.map(lambda x: x.sharding, state))
    chunk_fn = jax.jit(jax.vmap(lambda st, fn: run_chunk(step, st, chunk, fn)), donate_argnums=0)
    evaluate = make_eval(task, model_cfg, sampling, sft_params, eval_prompts, eval_split)
    ck = Checkpointer(layout.checkpoints(mdir), max_to_keep=2)
    meta = {"method": method, "reward": [describe(fns[s]) for s in seeds], "seeds": list(seeds),
            "runs": [list(r) for r in runs], "rl": dataclasses.asdict(rl),
            "base_fingerprint": sft_meta.get("base_fingerprint")}
    if ck.latest_step() is not None:
        target = abstract_with_shardings(jax.eval_shape(lambda: state),
                                         jax.tree.map(lambda x: x.sharding, state))
        state, _ = ck.restore(None, target)
    start = int(np.max(jax.device_get(state.step)))
    with MetricsWriter(mdir, "train") as w, MetricsWriter(mdir, "eval", tensorboard=False) as we:
        w.rewind(start)
        we.rewind(start if start else -1)   # a fresh start writes step 0's evaluation again
        last = None
        if start == 0:
            last = _write_eval(we, evaluate, state, fn_R, runs, 0, method)
        for s0 in progress(range(start, num_steps, chunk), desc=f"rl {rm_name}/{method}",
                           total=num_steps // chunk, initial=start // chunk):
            state, metrics = chunk_fn(state, fn_R)
            metrics = jax.device_get(metrics)
            bad = [k for k in GUARDED if k in metrics and not np.isfinite(metrics[k]).all()]
            if bad:
                raise NonFiniteError(
                    f"rl {rm_name}/{method}: non-finite {bad} in steps {s0 + 1}..{s0 + chunk}; "
                    f"last good checkpoint {ck.latest_step()} in {ck.directory} is kept")
            _log(w, metrics, runs, s0, log_every, method, task)
            # evaluated before the checkpoint: a resume from it finds its evaluation written
            last = _write_eval(we, evaluate, state, fn_R, runs, s0 + chunk, method)
            kill_point("rl.chunk")
            ck.save(s0 + chunk, state, meta)
            if preemption_requested() and s0 + chunk < num_steps:
                raise Preempted(f"rl {rm_name}/{method}: stopped by SIGTERM after saving step "
                                f"{s0 + chunk}; rerun the same command to resume")
        if last is None or last[0] != int(np.max(jax.device_get(state.step))):
            last = eval_rows(evaluate, state, fn_R, runs, method)
    _write_final(mdir, task, last, runs, fns, method)


def _write_eval(we, evaluate, state, fn_R, runs, step, method):
    last = eval_rows(evaluate, state, fn_R, runs, method)
    for row in last[1]:
        we.write(step, row)
    return last


def _write_final(mdir, task, last, runs, fns, method):
    """final.jsonl (the last held-out evaluation, with each run's reward normalisation) and the
    final policies' responses (eval_samples.npz)."""
    step, rows, out, prompts = last
    toks, masks, final = {}, {}, []
    for i, ((alpha, s), row) in enumerate(zip(runs, rows)):
        final.append({"step": step, **row, "reward_shift": float(fns[s].shift),
                      "reward_scale": float(fns[s].scale)})
        toks[f"a{alpha}_s{s}"] = np.asarray(out["tokens_BxN"][i])
        masks[f"a{alpha}_s{s}"] = np.asarray(out["mask_BxN"][i])
    atomic_write(os.path.join(mdir, "eval_samples.npz"),
                 lambda f: np.savez(f, prompts=prompts,
                                    **{f"tokens/{k}": v for k, v in toks.items()},
                                    **{f"mask/{k}": v for k, v in masks.items()}))
    write_jsonl(os.path.join(mdir, "final.jsonl"), final)  # last: it marks the method done


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
