"""What RL, WARP and best-of-N start from: the SFT policy, its samples, and the reward function of
each method over each chain seed's reward models (`<workdir>/rm/<rm_name>/`): `single` is the best
member (top-1 average), `warm_M<k>` the WARM averages, `ens` / `wco` / `uwo` the members'
ensembles (`ens_M<k>`: of the k members `warm_M<k>` averages). Every method's rewards are
z-normalised on SFT samples unless told otherwise (reward scale sets the effective α).
"""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.average.rewards import make_reward_function, normalised, standardised_members
from warm_jax.checkpoint import Checkpointer, assign_with_fallback, restore_params
from warm_jax.average.rewards import RewardSpec
from warm_jax.layout import RunLayout, chain
from warm_jax.models import ModelConfig, RewardModel, SamplingConfig, jitted_sampler, unbox

# the training metrics a non-finite value of stops RL and WARP
GUARDED = ("kl", "pg_loss", "value_loss", "proxy_reward", "return")


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
                                    "(add its M to AverageConfig.m_values)")
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
                                f"(add {spec.m} to AverageConfig.m_values)")
    return [int(i) for i in Checkpointer(path, read_only=True).restore_meta()["member_indices"]]



def sft_policy(layout: RunLayout):
    """The SFT policy's (params, meta)."""
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



def shared_inputs(layout, task, model_cfg, rl, max_new_tokens) -> dict:
    """What every method's RL (and WARP, `warp_stage`) starts from: the SFT policy, its value
    init, normalisation samples."""
    sft_params, sft_meta = sft_policy(layout)
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
