"""Stage: best-of-n from the SFT policy against each reward function, scored by the oracle.

For every n ≤ N in BON_NS the expected control reward of the proxy's choice among n of a prompt's
N samples comes from one estimator, `eval.evidence.bon_unbiased` (Nakano et al. 2021; Coste et
al. 2023). KL_bon(n) = log n − (n−1)/n. Writes `<workdir>/rl/<rm_name>/bon.jsonl`.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from warm_jax import checks
from warm_jax.average.rewards import aggregate, member_call, score_call
from warm_jax.eval.evidence import auc_log2, bon_unbiased
from warm_jax.average.rewards import RewardSpec
from warm_jax.data.task import chain_seed
from warm_jax.fileio import write_jsonl
from warm_jax.layout import RunLayout, chain
from warm_jax.models import ModelConfig
from warm_jax.progress import progress
from warm_jax.rl.inputs import build_reward_function, ensemble_members, sft_policy, sft_samples

BON_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_METHODS = ("single", "warm_M2", "warm_M6", "ens")


def check_methods(cfg, field: str = "methods", *, allow_empty: bool = False) -> None:
    """Every name of `field` parses as a reward (`RewardSpec`); stored as a tuple. `allow_empty`:
    no method is a stage with nothing to do (a sweep of the reward models only)."""
    names = getattr(cfg, field)
    if isinstance(names, str) or not (names or allow_empty):
        checks.fail(cfg, field, f"a tuple of at least one of {RewardSpec.ALLOWED}")
    for name in names:
        try:
            RewardSpec.parse(name)
        except (ValueError, TypeError):
            checks.fail(cfg, field, f"names in {RewardSpec.ALLOWED}", value=name)
    object.__setattr__(cfg, field, tuple(names))


@dataclasses.dataclass(frozen=True)
class BoNConfig:
    """Best-of-n from the SFT policy (temperature 1) on the first `n_prompts` eval prompts, `N`
    samples each per chain seed. `uwo_lambda`: Coste et al.'s UWO λ; WCO / UWO members are
    standardised on these SFT samples first (`standardise_members`)."""
    rm_name: str = "clean"
    methods: Sequence[str] = DEFAULT_METHODS
    seeds: Sequence[int] = (0,)
    n_prompts: int = 128
    N: int = 64
    seed: int = 0
    uwo_lambda: float = 0.5
    standardise_members: bool = True
    ensemble_impl: str = checks.run_only("auto")

    def __post_init__(self):
        check_methods(self)
        checks.seeds(self, "seeds")
        checks.integers(self, 1, "n_prompts", "N")
        checks.integers(self, 0, "seed")
        checks.at_least(self, 0.0, "uwo_lambda")
        checks.one_of(self, "ensemble_impl", ("auto", "vmap", "map"))


def kl_bon(n: int) -> float:
    return math.log(n) - (n - 1) / n


def best_of_n(*, workdir: str, task, model_cfg: ModelConfig, cfg: BoNConfig) -> str:
    """Best-of-n from the SFT policy (temperature 1) under each reward, for every chain seed (its
    own N samples per prompt and its own reward models); control reward by the oracle, with the
    unbiased estimator for every n ≤ N in BON_NS. Rows: the mean curve per (seed, method), and per
    (seed, method) the per-prompt area under the control-reward gain over log2 n (`auc` rows, what
    the claims are decided on). WCO / UWO members are standardised on these SFT samples first."""
    rm_name = cfg.rm_name
    layout = RunLayout(workdir)
    out_path = layout.bon(rm_name)
    config = dict(task=task, model_cfg=model_cfg, **checks.recorded(cfg, drop=("rm_name",)))
    with layout.stage(f"best_of_n {rm_name}", os.path.join(layout.rl(rm_name), "bon"), config,
                      outputs=[out_path]):
        if not os.path.exists(out_path):
            rows = []
            for s in progress(cfg.seeds, desc=f"best_of_n {rm_name}"):
                rows += _best_of_n(layout, task, model_cfg, cfg, chain_seed(cfg.seed, s), s)
            write_jsonl(out_path, rows)
    return out_path



def _best_of_n(layout, task, model_cfg, cfg: BoNConfig, sample_seed, s) -> list[dict]:
    rm_name, N = cfg.rm_name, cfg.N
    sft_params, sft_meta = sft_policy(layout)
    prompt, resp, mask = sft_samples(task, model_cfg, sft_params, task.prompts("eval")[:cfg.n_prompts],
                                     N, 1.0, sample_seed)
    gold_PxN = task.gold_reward(prompt, resp, mask).reshape(-1, N)
    ns = [n for n in BON_NS if n <= N]
    rows, members_MxB = [], None
    for method in cfg.methods:
        spec = RewardSpec.parse(method)
        if spec.is_ensemble:   # the members are scored once; ENS / WCO / UWO aggregate them
            if members_MxB is None:
                ens = build_reward_function(layout, chain(rm_name, s), "ens", model_cfg,
                                            ensemble_impl=cfg.ensemble_impl,
                                            base_fingerprint=sft_meta.get("base_fingerprint"))
                members_MxB = _score_members(ens, prompt, resp, mask)
            r_MxB = members_MxB[ensemble_members(layout, chain(rm_name, s), spec)]
            if cfg.standardise_members and spec.kind in ("wco", "uwo"):
                r_MxB = (r_MxB - r_MxB.mean(1, keepdims=True)) / np.maximum(
                    r_MxB.std(1, keepdims=True), 1e-6)
            proxy = np.asarray(aggregate(jnp.asarray(r_MxB), spec.kind, cfg.uwo_lambda))
        else:
            fn = build_reward_function(layout, chain(rm_name, s), method, model_cfg,
                                       base_fingerprint=sft_meta.get("base_fingerprint"))
            proxy = _score(fn, prompt, resp, mask)
        rows += bon_rows(s, method, proxy.reshape(-1, N), gold_PxN, ns)
    return rows


def bon_rows(seed: int, method: str, proxy_PxN, gold_PxN, ns) -> list[dict]:
    """One seed's and method's best-of-N rows: per n, the unbiased mean control reward of the
    best of n by `proxy` (and its gain over the mean sample: the figure's curve), then one row of
    each prompt's area under that gain over log2 n (the claims' unit)."""
    control_PxK = bon_unbiased(proxy_PxN, gold_PxN, ns)
    rows = []
    for k, n in enumerate(ns):
        g = float(control_PxK[:, k].mean())
        rows.append({"step": n, "seed": seed, "method": method, "n": n, "kl_bon": kl_bon(n),
                     "gold": g, "gold_gain": g - float(gold_PxN.mean())})
    rows.append({"step": 0, "seed": seed, "method": method, "analysis": "auc", "ns": ns,
                 "values": [round(float(v), 5) for v in auc_log2(ns, control_PxK)]})
    return rows



def _score(fn, prompt, resp, mask, batch=1024):
    call = score_call
    return np.concatenate([np.asarray(call(fn, prompt[i:i + batch], jnp.ones_like(prompt[i:i + batch]),
                                           resp[i:i + batch], mask[i:i + batch]))
                           for i in range(0, len(prompt), batch)])



def _score_members(fn, prompt, resp, mask, batch=1024):
    """Raw member rewards, M x B."""
    return np.concatenate([np.asarray(member_call(fn, prompt[i:i + batch],
                                                  jnp.ones_like(prompt[i:i + batch]),
                                                  resp[i:i + batch], mask[i:i + batch]))
                           for i in range(0, len(prompt), batch)], 1)
