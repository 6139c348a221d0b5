"""WARP's findings (Ramé et al. 2024) and the 2×2 of averaging on both sides, decided from
the `warp` stage's rows (`<workdir>/warp/<rm>/<method>/final.jsonl`) and the RL stage's. Assembled
into `warm_jax.eval.claims.REGISTRY` after the other claims.

Declared before any run that decides them (the statistic, unit and sign of each below). Every
number is held-out control reward and KL to the SFT policy. Fronts are compared the way
`rl_front_at_kl` compares RL's: the control reward where a curve first reaches each of
`KL_BUDGETS` (interpolated between its points), at the budgets that every curve of the comparison
reaches, mean over them. Unless a claim says otherwise it reads iteration 1 and averages over the
WARP reward methods of the run (FULL=1: the single RM and WARM M = 6; the default demo: WARM M = 6).

Curves:
- *along*: one WARP policy's evaluations along its training (EMA anchor), in step order;
- *LITI*: one seed's SLERP points θ_η = (1 − η)·θ_init + η·θ_slerp, in η order;
- *WARP path*: what WARP traverses from the SFT policy: each earlier iteration's LITI points
  below its `next_eta` (the point at `next_eta` is the next iteration's init, its η = 0), then the
  last iteration's LITI points;
- *RL*: the RL stage's run of the same reward method, chain seed and α (SFT anchor).

Pairing: every comparison is paired by chain seed and, for per-prompt statistics, by held-out
prompt. Sampling keys are shared where the stage shares them (a seed's merged points with each
other; the WARP policies with RL at each step), not between merged points and the policies.
"""
from __future__ import annotations

import collections

import numpy as np

from warm_jax.eval import evidence as E
from warm_jax.eval.claim_data import (HACK_MARGIN, KL_BUDGETS, eval_runs, halves, main_warm,
                                      prompt_means, seed_units)
from warm_jax.eval.evidence import register


REGISTRY: dict = {}   # assembled in order by warm_jax.eval.claims


def warp_runs(d) -> dict[str, dict[int, dict]]:
    """{method: {seed: {"along": {(iteration, policy): rows by step}, "liti": {iteration: slerp
    rows by η}, "lerp": {iteration: row}, "next_eta": η}}} of the run's WARP rows."""
    out: dict = {}
    for method, rows in (d.get("warp") or {}).items():
        per = out.setdefault(method, {})
        for r in rows:
            s = per.setdefault(r["seed"], {"along": collections.defaultdict(list),
                                           "liti": collections.defaultdict(list), "lerp": {}})
            if r["point"] == "along":
                s["along"][(r["iteration"], r["policy"])].append(r)
            elif r["point"] == "slerp":
                s["liti"][r["iteration"]].append(r)
                s["next_eta"] = r["next_eta"]
            else:
                s["lerp"][r["iteration"]] = r
        for s in per.values():
            s["along"] = {k: sorted(v, key=lambda r: r["step"]) for k, v in s["along"].items()}
            s["liti"] = {k: sorted(v, key=lambda r: r["eta"]) for k, v in s["liti"].items()}
    return out


def warp_path(seed_runs) -> list[dict]:
    """The WARP path of one (method, seed): see the module doc."""
    its = sorted(seed_runs["liti"])
    path = [r for i in its[:-1] for r in seed_runs["liti"][i] if r["eta"] < seed_runs["next_eta"]]
    return path + seed_runs["liti"][its[-1]]


def front(rows, budgets) -> np.ndarray:
    """A curve's control reward where it first reaches each KL budget (NaN where it does not)."""
    return E.value_at_kl([r["kl"] for r in rows], [r["control_reward"] for r in rows], budgets)


def front_gap(pairs: dict, budgets=KL_BUDGETS, over_budgets=np.mean):
    """pairs {seed: [(curve A, curve B), ...]} -> ({seed: `over_budgets` (mean, or min for
    "dominates") of A − B, mean over the seed's pairs, at the budgets every curve of every pair
    reaches}, those budgets, {seed: the gap at each of them}), or (None, [], {}) without one."""
    fronts = {s: [(front(a, budgets), front(b, budgets)) for a, b in ps]
              for s, ps in pairs.items() if ps}
    common = [i for i in range(len(budgets))
              if all(np.isfinite(x[i]) for ps in fronts.values() for ab in ps for x in ab)]
    if not fronts or not common:
        return None, [], {}
    at = {s: np.mean([a[common] - b[common] for a, b in ps], 0) for s, ps in fronts.items()}
    return ({s: float(over_budgets(g)) for s, g in at.items()}, [budgets[i] for i in common],
            {str(s): [round(float(x), 4) for x in g] for s, g in at.items()})


def safe_kl(rows, margin: float = HACK_MARGIN) -> tuple[float, bool]:
    """(the largest KL of the curve's points before it first falls more than `margin` below its
    running peak, hacked). The peak so far is picked on the first half of the held-out prompts and
    the fall judged on the second (`halves`), so the noise of a maximum over points does not count
    as a fall. A curve that never falls that far is censored at its largest KL (hacked False)."""
    select, judged = halves(rows)
    peak = None
    for i, r in enumerate(rows):
        if peak is None or np.mean(r["gold_per_prompt"][select]) > np.mean(
                peak["gold_per_prompt"][select]):
            peak = r
        if np.mean(r["gold_per_prompt"][judged]) < np.mean(peak["gold_per_prompt"][judged]) - margin:
            return float(max(x["kl"] for x in rows[:i])), True
    return float(max(r["kl"] for r in rows)), False


def _alpha(runs) -> float:
    """The α of the WARP policies' EMA anchor (their rows carry the RL stage's `run_alpha`)."""
    alphas = {r["run_alpha"] for s in runs.values() for rows in s["along"].values() for r in rows}
    if len(alphas) != 1:
        raise ValueError(f"WARP rows of one method at several α {sorted(alphas)}")
    return alphas.pop()


def _per_method(d, pairs_of, over_budgets=np.mean):
    """Seed units of `front_gap` over each WARP method's pairs (`pairs_of(method, seed, runs)`),
    mean over methods; None without WARP rows or a budget every curve reaches. `extra` names any
    method or seed left out, each method's budgets and its gap at each budget per seed."""
    W = warp_runs(d)
    per_seed, budgets, by_method, at = collections.defaultdict(list), {}, {}, {}
    for method, per in sorted(W.items()):
        gaps, used, at_budget = front_gap({s: pairs_of(method, s, r) for s, r in
                                           sorted(per.items())}, over_budgets=over_budgets)
        if gaps is None:
            continue
        budgets[method], at[method] = used, at_budget
        by_method[method] = {str(s): round(g, 4) for s, g in gaps.items()}
        for s, g in gaps.items():
            per_seed[s].append(g)
    seeds = [s for s, v in per_seed.items() if len(v) == len(by_method)]
    return seed_units({s: [np.mean(per_seed[s])] for s in seeds}, methods=sorted(by_method),
                  methods_left_out=sorted(set(W) - set(by_method)),
                  seeds_left_out=sorted(set(per_seed) - set(seeds)), budgets=budgets,
                  per_method=by_method, gap_at_budget=at)


@register(registry=REGISTRY, id="warp_ema_front", paper_ref="WARP §3.1 (EMA anchor)",
          finding="Anchoring the KL penalty to an EMA of the policy (μ = 0.01) gives a better "
                  "KL–reward front than anchoring it to the SFT policy", figure="warp",
          statistic="per seed, the WARP policies' fronts along training (iteration 1) − the RL "
                    "stage's run of the same reward, seed and α, at the KL budgets every curve "
                    "reaches; mean over the policies, then over the WARP reward methods",
          unit="seed", kind="directional", direction=+1)
def warp_ema_front(d):
    rl_runs = {m: (_alpha(per), eval_runs(d, m)) for m, per in warp_runs(d).items()}

    def pairs(method, s, runs):
        alpha, evals = rl_runs[method]
        rl = evals.get((alpha, s))
        along = [a for (i, _), a in runs["along"].items() if i == 1]
        if rl and any(a[-1]["step"] != rl[-1]["step"] for a in along):
            raise ValueError(f"WARP {method} seed {s} ends at step {along[0][-1]['step']}, its RL "
                             f"run at {rl[-1]['step']}: unfinished run, or other num_steps?")
        return [(a, rl) for a in along] if rl else []
    return _per_method(d, pairs)


def _points(d, compute):
    """Per seed, `compute(seed runs)` (per-prompt values or one number) of iteration 1, mean over
    the WARP reward methods."""
    per_seed, W = collections.defaultdict(list), warp_runs(d)
    for method, per in sorted(W.items()):
        for s, runs in sorted(per.items()):
            if 1 in runs["lerp"] and 1 in runs["liti"]:
                per_seed[s].append(np.asarray(compute(runs), np.float64))
    return prompt_means(per_seed), sorted(W)


def _slerp1(runs):
    for r in runs["liti"][1]:
        if r["eta"] == 1.0:
            return r
    raise ValueError(f"WARP {runs['liti'][1][0]['method']} seed {runs['liti'][1][0]['seed']}: no "
                     "SLERP point at η = 1 (etas must include 1.0 for the SLERP claims)")


@register(registry=REGISTRY, id="warp_slerp_beats_policies", paper_ref="WARP §3.2 (Fig. 4)",
          finding="SLERP of the policies' task vectors has more control reward than each of the "
                  "policies it merges", figure="warp",
          statistic="per held-out prompt, control reward of SLERP (η = 1) − the best of its "
                    "policies at their last step (highest mean control reward: a maximum, so it "
                    "cannot contradict), iteration 1, mean over the WARP reward methods",
          unit="prompt", kind="directional", direction=+1, can_contradict=False)
def warp_slerp_beats_policies(d):
    def gap(runs):
        last = [rows[-1]["gold_per_prompt"] for (i, _), rows in runs["along"].items() if i == 1]
        return np.subtract(_slerp1(runs)["gold_per_prompt"], max(last, key=np.mean))
    per_seed, methods = _points(d, gap)
    return seed_units(per_seed, methods=methods)


@register(registry=REGISTRY, id="warp_slerp_beats_lerp", paper_ref="WARP §3.2 (Fig. 4)",
          finding="SLERP has more control reward than LERP (plain averaging) of the same policies",
          figure="warp",
          statistic="per held-out prompt, control reward of SLERP − LERP (η = 1), iteration 1, "
                    "mean over the WARP reward methods", unit="prompt", kind="directional",
          direction=+1)
def warp_slerp_beats_lerp(d):
    per_seed, methods = _points(d, lambda runs: np.subtract(
        _slerp1(runs)["gold_per_prompt"], runs["lerp"][1]["gold_per_prompt"]))
    return seed_units(per_seed, methods=methods)


@register(registry=REGISTRY, id="warp_lerp_lower_kl", paper_ref="WARP §3.2 (Fig. 4)",
          finding="LERP stays closer to the SFT policy than SLERP: lower KL", figure="warp",
          statistic="per seed, KL to the SFT policy of LERP − SLERP (η = 1, one sampling key), "
                    "iteration 1, mean over the WARP reward methods", unit="seed",
          kind="directional", direction=-1)
def warp_lerp_lower_kl(d):
    per_seed, methods = _points(d, lambda runs: [runs["lerp"][1]["kl"] - _slerp1(runs)["kl"]])
    return seed_units(per_seed, methods=methods)


@register(registry=REGISTRY, id="warp_liti_front", paper_ref="WARP §3.3 (Fig. 5)",
          finding="The LITI front (interpolating from the init towards the SLERP merge) dominates "
                  "the front of the single policies' checkpoints along training", figure="warp",
          statistic="per seed, the LITI front − the policies' fronts along training (iteration "
                    "1, mean over the policies), at each KL budget every curve reaches, the "
                    "smallest over those budgets (dominance; a minimum, so it cannot "
                    "contradict); mean over the WARP reward methods", unit="seed",
          kind="directional", direction=+1, can_contradict=False)
def warp_liti_front(d):
    return _per_method(d, lambda m, s, runs: [(runs["liti"][1], a) for (i, _), a in
                                              runs["along"].items() if i == 1], over_budgets=np.min)


@register(registry=REGISTRY, id="warp_iter2_front", paper_ref="WARP §3.4 (Fig. 6)",
          finding="A second WARP iteration pushes the front beyond the first", figure="warp",
          statistic="per seed, the LITI front of iteration 2 − of iteration 1, at the KL budgets "
                    "every curve reaches; mean over the WARP reward methods", unit="seed",
          kind="directional", direction=+1)
def warp_iter2_front(d):
    return _per_method(d, lambda m, s, runs: [(runs["liti"][2], runs["liti"][1])]
                       if 2 in runs["liti"] else [])


def cells(d) -> dict:
    """The run's cells of the 2×2 {single RM, WARM} × {RL (SFT anchor), WARP}: {(reward,
    optimiser): {seed: curve}}; RL's curve is the RL stage's run at the WARP policies' α."""
    warm, W = main_warm(d["eval"]), warp_runs(d)
    out = {}
    for reward in [m for m in ("single", warm) if m in W]:
        alpha = _alpha(W[reward])
        rl = {s: rows for (a, s), rows in eval_runs(d, reward).items() if a == alpha}
        out[(reward, "WARP")] = {s: warp_path(r) for s, r in W[reward].items()}
        if rl:
            out[(reward, "RL")] = rl
    return out


def _cell_gap(d, a, b):
    """Seed units of `front_gap` between cells a and b ("warm" for the pinned WARM), over the
    seeds both have; None without both."""
    warm, c = main_warm(d["eval"]), cells(d)
    a, b = ((warm if r == "warm" else r, o) for r, o in (a, b))
    if a not in c or b not in c:
        return None
    seeds = sorted(set(c[a]) & set(c[b]))
    gaps, used, at = front_gap({s: [(c[a][s], c[b][s])] for s in seeds})
    if gaps is None:
        return None
    return seed_units({s: [g] for s, g in gaps.items()}, a=list(a), b=list(b), budgets=used,
                  gap_at_budget=at)


CELL_STAT = ("per seed, control reward of {a} − {b} at the KL budgets both curves of every seed "
             "reach (WARP: its path over the iterations; RL: the RL stage's run at WARP's α)")


@register(registry=REGISTRY, id="warp_helps_single", paper_ref="WARP §4 / extension (2×2)",
          finding="With a single RM, WARP's front lies above standard RL's", figure="warp",
          statistic=CELL_STAT.format(a="WARP", b="RL, both against the single RM"), unit="seed",
          kind="directional", direction=+1)
def warp_helps_single(d):
    return _cell_gap(d, ("single", "WARP"), ("single", "RL"))


@register(registry=REGISTRY, id="warp_warm_beats_rl_warm", paper_ref="extension (2×2)",
          finding="Averaging on both sides beats averaging the reward models alone: WARP against "
                  "WARM lies above standard RL against WARM", figure="warp",
          statistic=CELL_STAT.format(a="WARP", b="RL, both against WARM M"), unit="seed",
          kind="directional", direction=+1)
def warp_warm_beats_rl_warm(d):
    return _cell_gap(d, ("warm", "WARP"), ("warm", "RL"))


@register(registry=REGISTRY, id="warp_warm_beats_warp_single", paper_ref="extension (2×2)",
          finding="Averaging on both sides beats averaging the policies alone: WARP against WARM "
                  "lies above WARP against the single RM", figure="warp",
          statistic=CELL_STAT.format(a="WARM M", b="the single RM, both optimised by WARP"),
          unit="seed", kind="directional", direction=+1)
def warp_warm_beats_warp_single(d):
    return _cell_gap(d, ("warm", "WARP"), ("single", "WARP"))


@register(registry=REGISTRY, id="warp_2x2_safe_kl", paper_ref="extension (2×2)",
          finding="Averaging on both sides reaches a larger KL before hacking than either alone",
          figure="warp",
          statistic=f"per seed, a curve's safe KL: the largest KL of its points before it first "
                    f"falls more than {HACK_MARGIN} below its running peak (peak picked on one "
                    f"half of the prompts, the fall judged on the other). Per comparison both "
                    f"curves' safe KL is capped at the smaller of their largest KLs, so a curve "
                    f"that merely travels further gains nothing; WARP+WARM − WARP+single and "
                    f"WARP+WARM − RL+WARM, the smaller of the two (a minimum over two "
                    f"comparisons: it cannot contradict)", unit="seed",
          kind="directional", direction=+1, can_contradict=False)
def warp_2x2_safe_kl(d):
    warm, c = main_warm(d["eval"]), cells(d)
    keys = [(warm, "WARP"), ("single", "WARP"), (warm, "RL")]
    if not all(k in c for k in keys):
        return None
    seeds = sorted(set.intersection(*(set(c[k]) for k in keys)))
    safe = {k: {s: safe_kl(c[k][s]) for s in seeds} for k in keys}
    reach = {k: {s: max(r["kl"] for r in c[k][s]) for s in seeds} for k in keys}

    def capped_gap(k, s):
        cap = min(reach[keys[0]][s], reach[k][s])
        return min(safe[keys[0]][s][0], cap) - min(safe[k][s][0], cap)
    per_seed = {s: [min(capped_gap(k, s) for k in keys[1:])] for s in seeds}
    return seed_units(per_seed, cells={f"{r}/{o}": {str(s): {"safe_kl": round(v[0], 4),
                                                          "hacked": v[1],
                                                          "largest_kl": round(reach[(r, o)][s], 4)}
                                                for s, v in safe[(r, o)].items()}
                                   for r, o in keys})
