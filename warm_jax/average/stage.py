"""The averaging stage: WARM checkpoints from the trained members, and the RM analyses.

Writes under `<workdir>/rm/<name>/`:
  averages/warm_M<k>/   uniform average of the best k members (ranked on `rank_by`)
  averages/greedy/      greedy soup: members added best-first while `rank_by` accuracy holds
  analysis.jsonl        lmc, corruption, corruption_pair and acc_vs_m rows
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import jax
import numpy as np

from warm_jax import checks
from warm_jax.average import analysis as A
from warm_jax.average.soup import average_checkpoints
from warm_jax.checkpoint import Checkpointer, restore_params
from warm_jax.checks import run_only
from warm_jax.fileio import kill_point, write_jsonl
from warm_jax.layout import RunLayout, chain
from warm_jax.models import ModelConfig
from warm_jax.ood import splits_of, with_ood
from warm_jax.progress import progress
from warm_jax.rm.loss import PAIR_KEYS, make_pair_scorer, task_reward_model
from warm_jax.data.task import seeded_task

DEFAULT_LMC_PAIRS = {"data_order": (0, 1), "learning_rate": (0, 2), "baklava": (0, 3)}


def member_params_at(layout: RunLayout, name: str, member: int, step: int,
                     population_of: str | None = None) -> dict:
    """A member's parameters at an intermediate training step: from its own run, or from the
    population of `population_of` (the run's name; chains of it are subdirectories)."""
    candidates = [(layout.rm_train(name, f"member_{member}"), False)]
    if population_of is not None:
        candidates.insert(0, (layout.rm_train(population_of, "population"), True))
    candidates.append((layout.rm_train(name, "population"), True))
    for run_dir, index in candidates:
        d = layout.checkpoints(run_dir)
        if os.path.isdir(d) and step in Checkpointer(d, read_only=True).all_steps():
            params, meta = restore_params(d, step)
            if index:
                keys = [(s.get("chain", name), s["member"]) for s in meta["specs"]]
                if (name, member) not in keys:
                    continue
                pos = keys.index((name, member))
                params = jax.tree.map(lambda x: x[pos], params)
            return params
    raise FileNotFoundError(f"no training checkpoint of member {member} at step {step} in "
                            f"{layout.rm(name)}")


def _subsample(split: dict[str, np.ndarray], n: int | None, seed: int) -> dict[str, np.ndarray]:
    total = len(split["chosen"])
    if n is None or total <= n:
        return split
    idx = np.sort(np.random.default_rng(seed).permutation(total)[:n])
    return {k: v[idx] for k, v in split.items()}


@dataclasses.dataclass(frozen=True)
class AverageConfig:
    """The averaging stage. The analyses score at most `max_eval_pairs` pairs per split (a seeded
    random subset, the same for every chain seed) to keep their weight averages cheap; the
    members' own accuracies in eval.jsonl use every pair. `random_orders` (acc_vs_m) and
    `pair_analysis` (WA vs ENS for every pair of members) are descriptive extras. `ood_pairs`:
    the analyses cover the sampled OOD split too (`warm_jax.ood`). `m_curve=False` skips the
    accuracy-against-M analysis (an ablation's population needs only its WA and ENS at M).
    `analysis_members`: WA and ENS "of all members" (the `corruption` and `units` rows) take the
    first k members only, so a population extended past another's size (FULL=1's ten clean
    members) is compared with it at one M; the averages and the M curve use every member.
    `analyses=False` writes the averages only: the members are scored on `rank_by` alone, and no
    weight average or ensemble beyond `m_values` is formed (the RL calibration's pilot seeds,
    which must not see WA or ENS)."""
    name: str = "clean"
    seeds: Sequence[int] = (0,)
    m_values: Sequence[int] = (2, 6)
    rank_by: str = "validation"
    greedy: bool = True
    lmc_pairs: Mapping[str, Sequence[int]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_LMC_PAIRS))
    n_lambdas: int = 11
    random_orders: int = 2
    pair_analysis: bool = True
    same_run_step: int | None = None
    max_eval_pairs: int | None = 1500
    seed: int = 0
    ood_pairs: bool = False
    m_curve: bool = True
    analysis_members: int | None = checks.if_set(None)
    analyses: bool = checks.if_set(True)
    allow_base_mismatch: bool = run_only(False)
    eval_batch_size: int = run_only(256)

    def __post_init__(self):
        checks.seeds(self, "seeds")
        checks.seeds(self, "m_values", empty_ok=True)   # distinct integers; M >= 1 below
        if 0 in self.m_values:
            checks.fail(self, "m_values", "distinct integers >= 1")
        checks.one_of(self, "rank_by", ("train", "train_clean", "train_corrupt", "validation",
                                        "test", "ood"))
        checks.integers(self, 2, "n_lambdas")
        checks.integers(self, 0, "random_orders", "seed")
        checks.integers(self, 1, "eval_batch_size")
        for f in ("same_run_step", "max_eval_pairs", "analysis_members"):
            checks.optional_integer(self, 1, f)
        if not isinstance(self.lmc_pairs, Mapping) or any(
                len(tuple(v)) != 2 or any(isinstance(i, bool) or not isinstance(i, int) or i < 0
                                          for i in v) for v in self.lmc_pairs.values()):
            checks.fail(self, "lmc_pairs", "a dict of name: (member, member), members >= 0")


def average_reward_models(*, workdir: str, task, model_cfg: ModelConfig, cfg: AverageConfig) -> str:
    """Average the members of every chain seed of `<workdir>/rm/<cfg.name>` (top-M and greedy
    soups) and run the analyses on each."""
    name, seeds = cfg.name, cfg.seeds
    layout = RunLayout(workdir)
    if cfg.ood_pairs:
        task = with_ood(task, layout.ood_pairs)
    rm_dir = layout.rm(name)
    config = dict(task=task, model_cfg=model_cfg, **checks.recorded(cfg, drop=("name",)))
    chains = [chain(name, s) for s in seeds]
    outputs = [p for c in chains for p in (os.path.join(layout.rm(c), "averages"),
                                           RunLayout.analysis_rows(layout.rm(c)))]
    with layout.stage(f"average {name}", os.path.join(rm_dir, "averaging"), config,
                      outputs=outputs):
        todo = [(s, c) for s, c in zip(seeds, chains)
                if not os.path.exists(RunLayout.analysis_rows(layout.rm(c)))]
        for s, c in progress(todo, desc=f"average {name}") if todo else ():
            _average_and_analyse(layout, c, seeded_task(task, s), model_cfg, cfg,
                                 population_of=name)
    return rm_dir


def _average_and_analyse(layout: RunLayout, name: str, task, model_cfg: ModelConfig,
                         cfg: AverageConfig, *, population_of: str) -> None:
    rm_dir = layout.rm(name)
    out_path = RunLayout.analysis_rows(rm_dir)
    if os.path.exists(out_path):  # written last; the stage config vouches for what it holds
        return
    dirs = layout.member_dirs(name)
    M = len(dirs)
    bad = [m for m in cfg.m_values if not 1 <= m <= M]
    if bad:
        raise ValueError(f"AverageConfig.m_values {bad} out of range: allowed [1, {M}]")
    k = M if cfg.analysis_members is None else cfg.analysis_members
    if not 1 <= k <= M:
        raise ValueError(f"AverageConfig.analysis_members={cfg.analysis_members} out of range: "
                         f"allowed [1, {M}]")
    rm = task_reward_model(task, model_cfg)
    splits = {s: _subsample({k: v for k, v in task.preference_split(s).items()
                             if k in PAIR_KEYS + ("flipped",)}, cfg.max_eval_pairs, cfg.seed)
              for s in splits_of(task)}
    subsets = A.split_masks(splits)
    if not cfg.analyses and cfg.rank_by in subsets:
        splits = {subsets[cfg.rank_by][0]: splits[subsets[cfg.rank_by][0]]}
        subsets = {cfg.rank_by: subsets[cfg.rank_by]}
    if cfg.rank_by not in subsets:
        raise ValueError(f"AverageConfig.rank_by={cfg.rank_by!r}: allowed {sorted(subsets)}")
    scorer = make_pair_scorer(rm, cfg.eval_batch_size)
    score_fn = lambda p: {s: scorer(p, d) for s, d in splits.items()}  # noqa: E731
    params = [restore_params(d)[0] for d in dirs]
    scores = [score_fn(p) for p in params]
    order = A.rank(scores, subsets, cfg.rank_by)

    for m in cfg.m_values:
        kill_point("average.write")
        average_checkpoints([dirs[i] for i in order[:m]], layout.average(name, f"warm_M{m}"),
                            method=f"top{m}_by_{cfg.rank_by}", allow_base_mismatch=cfg.allow_base_mismatch,
                            extra_meta={"member_indices": order[:m]})
    rows = []
    if not cfg.analyses:
        write_jsonl(out_path, [{"step": 0, "analysis": "eval_sizes",
                                "sizes": {cfg.rank_by: len(splits[subsets[cfg.rank_by][0]]["chosen"])}}])
        return
    if cfg.greedy:
        chosen = [order[0]]
        best = A.accuracies(scores[order[0]], {cfg.rank_by: subsets[cfg.rank_by]})[cfg.rank_by]
        for i in order[1:]:
            cand = chosen + [i]
            acc = A.accuracies(score_fn(A.mix([params[j] for j in cand], [1 / len(cand)] * len(cand))),
                               {cfg.rank_by: subsets[cfg.rank_by]})[cfg.rank_by]
            rows.append({"analysis": "greedy_soup", "candidate": i, "members": cand,
                         "acc": acc, "kept": acc >= best})
            if acc >= best:
                chosen, best = cand, acc
        average_checkpoints([dirs[i] for i in chosen], layout.average(name, "greedy"),
                            method=f"greedy_by_{cfg.rank_by}", allow_base_mismatch=cfg.allow_base_mismatch,
                            extra_meta={"member_indices": chosen})
    sizes = {k: int(len(splits[sp]["chosen"]) if m is None else int(np.sum(m)))
             for k, (sp, m) in subsets.items()}
    rows.append({"analysis": "eval_sizes", "sizes": sizes})
    # the curves (LMC, the M curve) on what their claims and figures read: the validation split
    # and the OOD one (the sampled `ood` pairs, else `test`); each point is a weight average to
    # score, so the training split (the largest) would cost the most and feed nothing
    ood = "ood" if "ood" in splits else "test"
    curve = {k: v for k, v in subsets.items() if k in ("validation", ood, cfg.rank_by)}
    curve_fn = lambda p: {s: scorer(p, d) for s, d in splits.items()  # noqa: E731
                          if s in {sp for sp, _ in curve.values()}}
    for pair_name, (a, b) in cfg.lmc_pairs.items():
        if max(a, b) < M:
            rows += A.lmc(params[a], params[b], scores[a], scores[b], curve_fn, curve,
                          pair_name, cfg.n_lambdas)
    if cfg.same_run_step is not None:
        mid = member_params_at(layout, name, 0, cfg.same_run_step, population_of)
        rows += A.lmc(mid, params[0], curve_fn(mid), scores[0], curve_fn, curve, "same_run",
                      cfg.n_lambdas)
    rows += A.corruption(params[:k], scores[:k], score_fn, subsets, pairs=cfg.pair_analysis)
    if cfg.m_curve:
        rows += A.acc_vs_m(params, scores, curve_fn, curve, rank_by=cfg.rank_by,
                           random_orders=cfg.random_orders)
    write_jsonl(out_path, [{"step": 0, **r} for r in rows])
