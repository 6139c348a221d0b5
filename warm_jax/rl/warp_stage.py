"""Stage: WARP (Ramé et al. 2024) against each reward function, on the RL stage's pieces.

Per reward method (the 2×2's reward axis: `single`, `warm_M6`, ...) and chain seed, one iteration:
1. `n_policies` policies from one init (the SFT policy, then the previous iteration's LITI point at
   `next_eta`), differing only by their RNG seed, trained by REINFORCE with WARP's EMA anchor
   (`warp.make_warp_rl`, rate `mu`; the logged training KL is to the EMA). Every (seed, policy) run
   of a method is one vmapped program.
2. Each policy exported as its own checkpoint (`warp_io.export_policies`), then merged around the
   init by SLERP of the task vectors and by LERP, read a slice of leaves at a time
   (`warp_io.merge_checkpoints`).
3. LITI: θ_η = (1 − η)·θ_init + η·θ_slerp for every η of `etas`, and LERP's merge at η = 1.

Every point (each policy along training and at the end, each LITI point, LERP) is evaluated like
the RL stage's runs: held-out prompts, KL to the *SFT* policy, control reward per prompt. The
merged points of a seed and iteration share one sampling key (compared on the same samples'
randomness); the policies along training use the RL stage's key of each step (shared with RL's
runs of that seed), so merged points and policies are paired by prompt, not by sample.

Writes `<workdir>/warp/<rm_name>/<method>/`: iter_<i>/ (checkpoints, policies/, seed_<s>/ merges,
eval.jsonl: that iteration's rows, written last), final.jsonl (every iteration's rows; marks the
method done). A killed run resumes at its first unfinished iteration.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax import checks
from warm_jax.checkpoint import Checkpointer, NonFiniteError, restore_params
from warm_jax.checks import run_only
from warm_jax.data.task import oracle_of
from warm_jax.fileio import kill_point, write_jsonl
from warm_jax.layout import RunLayout
from warm_jax.metrics import read_jsonl
from warm_jax.models import ModelConfig
from warm_jax.progress import progress
from warm_jax.rl import warp_io
from warm_jax.rl.bon import check_methods
from warm_jax.rl.reinforce import RLConfig, run_chunk
from warm_jax.rl.heldout import eval_rows, make_eval, metrics
from warm_jax.rl.inputs import GUARDED, seed_rewards, shared_inputs
from warm_jax.rl.warp import make_warp_rl
from warm_jax.rm.population import committed, stack


@dataclasses.dataclass(frozen=True)
class WARPConfig:
    """The WARP stage (module doc): `n_policies` EMA-anchored policies (rate `mu`) per chain seed
    and iteration, at KL penalty `alpha`, merged by SLERP / LERP; LITI points at `etas`, the one
    at `next_eta` the next iteration's init."""
    rm_name: str = "clean"
    methods: Sequence[str] = ("single", "warm_M6")
    seeds: Sequence[int] = (0,)
    n_policies: int = 2
    mu: float = 0.01
    alpha: float = 0.001
    iterations: int = 2
    num_steps: int = 200
    chunk: int = 50
    etas: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 1.0)
    next_eta: float = 0.3
    rl: RLConfig = RLConfig()
    eval_prompts: int = 256
    normalise: bool = True
    uwo_lambda: float = 0.1
    ensemble_impl: str = run_only("auto")
    allow_base_mismatch: bool = run_only(False)

    def __post_init__(self):
        check_methods(self)
        checks.seeds(self, "seeds")
        checks.integers(self, 2, "n_policies")
        checks.integers(self, 1, "iterations", "eval_prompts")
        checks.multiple_of(self, "num_steps", "chunk")
        checks.check_range("WARPConfig", "mu", self.mu, 0.0, 1.0)
        checks.at_least(self, 0.0, "alpha", "uwo_lambda")
        checks.numbers(self, "etas")
        if max(self.etas) > 1.0:
            checks.fail(self, "etas", "distinct values in [0, 1]")
        object.__setattr__(self, "etas", tuple(float(e) for e in self.etas))
        if isinstance(self.next_eta, bool) or not isinstance(self.next_eta, (int, float)) or \
                float(self.next_eta) not in self.etas:
            checks.fail(self, "next_eta", f"one of etas={self.etas}")
        object.__setattr__(self, "next_eta", float(self.next_eta))
        checks.one_of(self, "ensemble_impl", ("auto", "vmap", "map"))


def warp_policies(*, workdir: str, task, model_cfg: ModelConfig, cfg: WARPConfig) -> str:
    """WARP for each reward method of `cfg` (see the module doc); returns
    `<workdir>/warp/<rm_name>`."""
    rm_name = cfg.rm_name
    layout = RunLayout(workdir)
    root = layout.warp(rm_name)
    shared: dict = {}
    for method in cfg.methods:
        mdir = os.path.join(root, method)
        config = dict(task=task, model_cfg=model_cfg, method=method,
                      **checks.recorded(cfg, drop=("rm_name", "methods")))
        with layout.stage(f"warp {rm_name}/{method}", mdir, config):
            if os.path.exists(RunLayout.final_rows(mdir)):
                continue
            if not shared:
                shared.update(shared_inputs(layout, task, model_cfg, cfg.rl, None))
            _warp_method(layout, mdir, method, task, model_cfg, cfg, **shared)
    return root


def _warp_method(layout, mdir, method, task, model_cfg, cfg: WARPConfig, *, sft_params, sft_meta,
                 sampling, rl_prompts, value0, norm) -> None:
    fns = seed_rewards(layout, cfg.rm_name, method, model_cfg, cfg.seeds, sft_meta=sft_meta, norm=norm,
                       normalise=cfg.normalise, standardise_members=True, uwo_lambda=cfg.uwo_lambda,
                       ensemble_impl=cfg.ensemble_impl, allow_base_mismatch=cfg.allow_base_mismatch)
    runs = [(s, m) for s in cfg.seeds for m in range(cfg.n_policies)]
    fn_R = stack([fns[s] for s, _ in runs])
    init_state, step = make_warp_rl(mu=cfg.mu, model_cfg=model_cfg, cfg=cfg.rl, sampling=sampling,
                                    ref_params=sft_params, prompts_NxP=rl_prompts,
                                    oracle=oracle_of(task))
    chunk_fn = jax.jit(jax.vmap(lambda st, fn: run_chunk(step, st, cfg.chunk, fn)), donate_argnums=0)
    evaluate = make_eval(task, model_cfg, sampling, sft_params, cfg.eval_prompts)
    as_rl_runs = [(cfg.alpha, s) for s, _ in runs]   # the RL stage's (α, seed) row keys
    inits = {s: layout.checkpoints(layout.sft) for s in cfg.seeds}
    rows: list[dict] = []
    for it in range(1, cfg.iterations + 1):
        idir = os.path.join(mdir, f"iter_{it}")
        merges = {s: {eta: os.path.join(idir, f"seed_{s}", f"slerp_eta{eta:g}") for eta in cfg.etas}
                  for s in cfg.seeds}
        done = RunLayout.eval_rows(idir)
        if not os.path.exists(done):
            shutil.rmtree(idir, ignore_errors=True)   # an unfinished iteration starts afresh
            it_rows = []
            policies = {s: restore_params(inits[s])[0] for s in cfg.seeds}
            state = committed(stack([init_state(policies[s], value0, 10_000 * (it + 1) + 100 * s + m,
                                                cfg.alpha) for s, m in runs]))
            for s0 in progress(range(0, cfg.num_steps, cfg.chunk), desc=f"warp {cfg.rm_name}/{method} "
                               f"iteration {it}"):
                if s0 == 0:
                    it_rows += _rows(evaluate, state.rl, fn_R, as_rl_runs, runs, method, it,
                                     "along")
                state, metrics = chunk_fn(state, fn_R)
                metrics = jax.device_get(metrics)
                bad = [k for k in GUARDED if k in metrics and not np.isfinite(metrics[k]).all()]
                if bad:
                    raise NonFiniteError(f"warp {cfg.rm_name}/{method}, iteration {it}: non-finite "
                                         f"{bad} in steps {s0 + 1}..{s0 + cfg.chunk}; nothing of "
                                         "this iteration is kept")
                it_rows += _rows(evaluate, state.rl, fn_R, as_rl_runs, runs, method, it, "along")
                kill_point("warp.chunk")
            ck_dir = os.path.join(idir, "checkpoints")
            Checkpointer(ck_dir, max_to_keep=1).save(cfg.num_steps, {"policy": state.rl.policy}, {
                "method": method, "runs": [[cfg.alpha, s] for s, _ in runs],
                "policy_index": [m for _, m in runs], "mu": cfg.mu, "iteration": it,
                "base_fingerprint": sft_meta.get("base_fingerprint")})
            exported = warp_io.export_policies(ck_dir, os.path.join(idir, "policies"))
            points = []   # (seed, kind, η, checkpoint)
            for s in cfg.seeds:
                members = [exported[r] for r, (s2, _) in enumerate(runs) if s2 == s]
                warp_io.merge_checkpoints(inits[s], members, merges[s], how="slerp")
                lerp = os.path.join(idir, f"seed_{s}", "lerp")
                warp_io.merge_checkpoints(inits[s], members, {1.0: lerp}, how="lerp")
                points += [(s, "slerp", eta, merges[s][eta]) for eta in cfg.etas]
                points.append((s, "lerp", 1.0, lerp))
            it_rows += _point_rows(evaluate, fns, points, method, it, cfg.next_eta)
            write_jsonl(done, it_rows)   # last: marks the iteration done
        rows += read_jsonl(done)
        inits = {s: merges[s][cfg.next_eta] for s in cfg.seeds}
    write_jsonl(RunLayout.final_rows(mdir), rows)


def _rows(evaluate, rl_state, fn_R, as_rl_runs, runs, method, it, kind) -> list[dict]:
    """The RL stage's held-out rows of every (seed, policy) run, tagged with WARP's keys."""
    step, rows, _, _ = eval_rows(evaluate, rl_state, fn_R, as_rl_runs, method)
    return [dict(r, step=step, iteration=it, point=kind, policy=m)
            for r, (_, m) in zip(rows, runs)]


def _point_rows(evaluate, fns, points, method, it, next_eta) -> list[dict]:
    """Held-out rows of the merged points, one program over all of them; a seed's points share
    one sampling key. `next_eta` (the next iteration's init) lets the claims trace WARP's path."""
    run, _ = evaluate
    params = stack([restore_params(p)[0] for _, _, _, p in points])
    keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(30_000 + s), it)
                      for s, _, _, _ in points])
    out = run(params, stack([fns[s] for s, _, _, _ in points]), keys)
    return [{"method": method, "iteration": it, "seed": s, "point": kind, "eta": eta,
             "next_eta": next_eta, **metrics(out, i)} for i, (s, kind, eta, _) in enumerate(points)]
