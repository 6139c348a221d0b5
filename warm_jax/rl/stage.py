"""Stage: RL of the SFT policy against each reward function at several α and chain seeds.

Reward functions: `warm_jax.rl.inputs` (z-normalised on SFT samples unless `normalise=False`; the
shift and scale are written with the run). Writes, per method, `<workdir>/rl/<rm_name>/<method>/`:
  checkpoints/ (all runs of the method, stacked), train.jsonl (one row per run and logged step),
  eval.jsonl (held-out evaluation every `chunk` steps), final.jsonl (the last one, written last),
  eval_samples.npz (responses for win rates).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import numpy as np

from warm_jax import checks
from warm_jax.average.rewards import describe
from warm_jax.checkpoint import Checkpointer, NonFiniteError, abstract_with_shardings
from warm_jax.checks import run_only
from warm_jax.data.task import oracle_of
from warm_jax.fileio import atomic_write, kill_point, write_jsonl
from warm_jax.guards import Preempted, preemption_requested
from warm_jax.layout import RunLayout
from warm_jax.metrics import MetricsWriter
from warm_jax.models import ModelConfig
from warm_jax.progress import progress
from warm_jax.rl.bon import DEFAULT_METHODS, check_methods
from warm_jax.rl.heldout import eval_rows, make_eval
from warm_jax.rl.inputs import GUARDED, seed_rewards, shared_inputs
from warm_jax.rl.reinforce import RLConfig, make_rl, run_chunk
from warm_jax.rm.population import committed, stack


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """The RL stage: one vmapped program per method over (α × chain seeds); run (α, s) optimises
    the reward models of chain seed s. Every `chunk` steps (and at step 0) each run is evaluated
    on the first `eval_prompts` of the task's `eval_split` prompts (control reward per prompt, KL
    to the SFT policy). An α sweep: the `sweep_methods` run at every α of `sweep_alphas`, the
    others at `alphas`; with `sweep_seeds`, a sweep α not in `alphas` runs for those seeds only."""
    rm_name: str = "clean"
    methods: Sequence[str] = DEFAULT_METHODS
    alphas: Sequence[float] = (0.01,)
    seeds: Sequence[int] = (0,)
    rl: RLConfig = RLConfig()
    num_steps: int = 300
    chunk: int = 50
    log_every: int = 10
    normalise: bool = True
    uwo_lambda: float = 0.1
    standardise_members: bool = True
    max_new_tokens: int | None = None
    eval_prompts: int = 256
    eval_split: str = checks.if_set("eval")
    sweep_methods: Sequence[str] = ()
    sweep_alphas: Sequence[float] = ()
    sweep_seeds: Sequence[int] = ()
    ensemble_impl: str = run_only("auto")
    allow_base_mismatch: bool = run_only(False)

    def __post_init__(self):
        check_methods(self, allow_empty=True)
        checks.seeds(self, "seeds")
        checks.seeds(self, "sweep_seeds", empty_ok=True)
        checks.numbers(self, "alphas")
        checks.numbers(self, "sweep_alphas", empty_ok=True)
        checks.multiple_of(self, "num_steps", "chunk")
        checks.integers(self, 1, "log_every", "eval_prompts")
        checks.optional_integer(self, 1, "max_new_tokens")
        checks.at_least(self, 0.0, "uwo_lambda")
        checks.one_of(self, "ensemble_impl", ("auto", "vmap", "map"))
        if isinstance(self.sweep_methods, str) or not set(self.sweep_methods) <= set(self.methods):
            checks.fail(self, "sweep_methods", f"names among methods={self.methods}")
        object.__setattr__(self, "sweep_methods", tuple(self.sweep_methods))
        if self.sweep_methods and not self.sweep_alphas:
            checks.fail(self, "sweep_alphas", "at least one α when sweep_methods are given")
        if not set(self.sweep_seeds) <= set(self.seeds):
            checks.fail(self, "sweep_seeds", f"seeds among seeds={self.seeds}")

    def runs(self, method: str) -> list[tuple[float, int]]:
        """The (α, chain seed) runs of `method`."""
        alphas = self.sweep_alphas if method in self.sweep_methods else self.alphas
        return [(a, s) for a in alphas for s in
                (self.sweep_seeds if self.sweep_seeds and a not in self.alphas else self.seeds)]


def train_policies(*, workdir: str, task, model_cfg: ModelConfig, cfg: PolicyConfig) -> str:
    """RL from the SFT policy for every method of `cfg` (see `PolicyConfig`); each method resumes
    from its checkpoints or, with final.jsonl written, is done."""
    layout = RunLayout(workdir)
    shared: dict = {}
    for method in cfg.methods:
        mdir = layout.rl_method(cfg.rm_name, method)
        runs = cfg.runs(method)
        config = dict(task=task, model_cfg=model_cfg, method=method,
                      alphas=tuple(cfg.sweep_alphas if method in cfg.sweep_methods else
                                   cfg.alphas),
                      **checks.recorded(cfg, drop=("rm_name", "methods", "alphas", "sweep_methods",
                                                   "sweep_alphas", "sweep_seeds")))
        if cfg.sweep_seeds and method in cfg.sweep_methods:   # as recorded before: only then
            config["runs"] = runs
        with layout.stage(f"rl {cfg.rm_name}/{method}", mdir, config):
            if os.path.exists(RunLayout.final_rows(mdir)):
                continue
            if not shared:
                shared.update(shared_inputs(layout, task, model_cfg, cfg.rl, cfg.max_new_tokens))
            train_runs(layout, mdir, method, task, model_cfg, cfg, runs=runs, **shared)
    return layout.rl(cfg.rm_name)


def train_runs(layout, mdir, method, task, model_cfg, cfg: PolicyConfig, *, runs, sft_params,
               sft_meta, sampling, rl_prompts, value0, norm) -> None:
    """The (α, seed) `runs` of one reward `method` in `mdir`, one vmapped program, resumed from
    its checkpoints; writes train.jsonl, eval.jsonl (every `cfg.chunk` steps), final.jsonl last."""
    runs = [tuple(r) for r in runs]
    rm_name, rl, seeds, num_steps, chunk = cfg.rm_name, cfg.rl, cfg.seeds, cfg.num_steps, cfg.chunk
    fns = seed_rewards(layout, rm_name, method, model_cfg, seeds, sft_meta=sft_meta, norm=norm,
                       normalise=cfg.normalise, standardise_members=cfg.standardise_members,
                       uwo_lambda=cfg.uwo_lambda, ensemble_impl=cfg.ensemble_impl,
                       allow_base_mismatch=cfg.allow_base_mismatch)
    fn_R = stack([fns[s] for _, s in runs])   # run r optimises its chain seed's reward
    init_state, step = make_rl(model_cfg=model_cfg, cfg=rl, sampling=sampling,
                               ref_params=sft_params, prompts_NxP=rl_prompts,
                               oracle=oracle_of(task))
    state = committed(stack([init_state(sft_params, value0, s, a) for a, s in runs]))
    chunk_fn = jax.jit(jax.vmap(lambda st, fn: run_chunk(step, st, chunk, fn)), donate_argnums=0)
    evaluate = make_eval(task, model_cfg, sampling, sft_params, cfg.eval_prompts, cfg.eval_split)
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
            _log(w, metrics, runs, s0, cfg.log_every, method, task)
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
    atomic_write(RunLayout.eval_samples(mdir),
                 lambda f: np.savez(f, prompts=prompts,
                                    **{f"tokens/{k}": v for k, v in toks.items()},
                                    **{f"mask/{k}": v for k, v in masks.items()}))
    write_jsonl(RunLayout.final_rows(mdir), final)  # last: it marks the method done



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
