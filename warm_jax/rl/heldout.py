"""Held-out evaluation of policies, shared by the RL and WARP stages: each policy sampled on the
first `n` evaluation prompts, its KL to the SFT policy, its proxy reward and (with an oracle) its
control reward per prompt, as the rows that the claims read."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.data.task import oracle_of
from warm_jax.losses import response_logprobs
from warm_jax.models import LanguageModel, make_sampler


def make_eval(task, model_cfg, sampling, sft_params, n, split: str = "eval"):
    """One program for every run: sample each run's policy on the first `n` prompts of `split`
    (the held-out "eval" prompts; the calibration's disjoint "pilot" prompts),
    its KL to the SFT policy (sum over the response of log π − log π_SFT at the sampling
    temperature), its chain seed's proxy reward and, with an oracle, the control reward."""
    lm = LanguageModel(model_cfg)
    prompts = jnp.asarray(task.prompts(split)[:n])
    sample = make_sampler(lm, sampling)
    logp = lambda p, r, m: response_logprobs(lm, p, prompts, r, m, sampling.temperature)  # noqa
    oracle = oracle_of(task)

    def one(policy, fn, key):
        out = sample(policy, prompts, jnp.ones_like(prompts), key)
        kl = (logp(policy, out.tokens_BxN, out.mask_BxN) -
              logp(sft_params, out.tokens_BxN, out.mask_BxN)).sum(-1)
        res = {"kl_B": kl, "proxy_B": fn(prompts, jnp.ones_like(prompts), out.tokens_BxN,
                                          out.mask_BxN),
               "tokens_BxN": out.tokens_BxN, "mask_BxN": out.mask_BxN}
        if oracle is not None:
            res["gold_B"] = oracle(prompts, out.tokens_BxN, out.mask_BxN)
        return res
    run = jax.jit(jax.vmap(one))
    return lambda policies, fn_R, keys: jax.device_get(run(policies, fn_R, keys)), prompts


def eval_rows(evaluate, state, fn_R, runs, method):
    run, prompts = evaluate
    step = int(np.max(jax.device_get(state.step)))
    keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(10_000 + s), step) for _, s in runs])
    out = run(state.policy, fn_R, keys)
    rows = [{"method": method, "run_alpha": alpha, "seed": s, **metrics(out, i)}
            for i, (alpha, s) in enumerate(runs)]
    return step, rows, out, np.asarray(prompts)


def metrics(out, i) -> dict:
    """Policy i's row fields from an evaluation's output: mean KL, proxy reward and length, and
    with an oracle the control reward, also per prompt (so that paired claims and win rates need
    nothing but the JSONL)."""
    row = {"kl": float(out["kl_B"][i].mean()), "proxy_reward": float(out["proxy_B"][i].mean()),
           "length": float(out["mask_BxN"][i].sum(-1).mean())}
    if "gold_B" in out:
        row["control_reward"] = float(out["gold_B"][i].mean())
        row["gold_per_prompt"] = [round(float(g), 5) for g in out["gold_B"][i]]
    return row
