"""WARM's best-of-N and RL findings (Figs. 1b, 6-9, the slides' win rates and Gao et al.'s fits),
declared here and assembled into `warm_jax.eval.claims.REGISTRY` after the reward-model claims
(which also mirrors some of them on the corrupted-label reward models)."""
from __future__ import annotations

import collections

import numpy as np

from warm_jax.eval import evidence as E
from warm_jax.eval.claim_data import (FALL_MARGIN, KL_BUDGETS, LABEL_TEMPERATURE, RISE_MARGIN,
                                      best_step, eval_runs, fall_at_kl, from_step0, halves,
                                      main_warm, part_units, peak_row, prompt_means, reach,
                                      rise_and_fall, seed_units, warm_names)
from warm_jax.eval.evidence import register
from warm_jax.eval.metrics import gao_fit

REGISTRY: dict = {}   # assembled in order by warm_jax.eval.claims


# --- best-of-N (Figs. 6-7) --------------------------------------------------------------------

def _bon_auc(d, method) -> dict[int, np.ndarray]:
    return {r["seed"]: np.asarray(r["values"]) for r in d["bon"]
            if r.get("analysis") == "auc" and r["method"] == method}


def _bon_diff(d, a, b):
    if a is None or b is None:
        return None
    A, B = _bon_auc(d, a), _bon_auc(d, b)
    return seed_units({s: A[s] - B[s] for s in sorted(set(A) & set(B))}, a=a, b=b)


def _bon_methods(d):
    return warm_names({r["method"] for r in d["bon"]})


BON_STAT = ("per prompt, area under the unbiased best-of-n control-reward gain over log2 n "
            "(n = 1 … N), {a} − {b}")


@register(registry=REGISTRY, id="bon_warm_beats_smaller_m", paper_ref="Figs. 6-7",
          finding="Best-of-N: WARM with the larger M beats WARM M=2", figure="bon",
          statistic=BON_STAT.format(a="WARM M (M = 6 where run, `main_warm`)", b="WARM M=2"),
          unit="prompt", kind="directional", direction=+1)
def bon_warm_beats_smaller_m(d):
    w, main = _bon_methods(d), main_warm({r["method"] for r in d["bon"]})
    return _bon_diff(d, main, w[0]) if main and main != w[0] else None


@register(registry=REGISTRY, id="bon_warm_beats_single", paper_ref="Figs. 6-7",
          finding="Best-of-N: WARM M=2 beats the single (best) RM", figure="bon",
          statistic=BON_STAT.format(a="WARM M=2", b="single"), unit="prompt",
          kind="directional", direction=+1, primary=True)
def bon_warm_beats_single(d):
    w = _bon_methods(d)
    return _bon_diff(d, w[0] if w else None, "single")


@register(registry=REGISTRY, id="bon_warm_beats_ens", paper_ref="Figs. 6-7",
          finding="Best-of-N: WARM M=2 beats ENS M=2 of the same two members (the paper's ENS "
                  "baseline)", figure="bon",
          statistic=BON_STAT.format(a="WARM M=2", b="ENS M=2"), unit="prompt",
          kind="directional", direction=+1)
def bon_warm_beats_ens(d):
    w = _bon_methods(d)
    return _bon_diff(d, w[0], "ens_" + w[0][len("warm_"):]) if w else None


def _bon_all(d):
    """The WARM of all the members (the run's largest M): `ens`, `wco` and `uwo` combine all the
    members, so these comparisons hold the members fixed (FULL=1: M = 10 against 10)."""
    w = _bon_methods(d)
    return w[-1] if w else None


@register(registry=REGISTRY, id="bon_warm_beats_ens_all", paper_ref="extension",
          finding="Best-of-N: WARM of all the members beats ENS of the same members",
          figure="bon", statistic=BON_STAT.format(a="WARM of all members (largest M)",
                                                  b="ENS of all members"), unit="prompt",
          kind="directional", direction=+1)
def bon_warm_beats_ens_all(d):
    return _bon_diff(d, _bon_all(d), "ens")


@register(registry=REGISTRY, id="bon_warm_beats_wco", paper_ref="extension (Coste et al. 2023)",
          finding="Best-of-N: WARM beats WCO (worst case over standardised members) at 1/M of "
                  "its inference cost", figure="bon",
          statistic=BON_STAT.format(a="WARM of all members", b="WCO"), unit="prompt",
          kind="directional",
          direction=+1)
def bon_warm_beats_wco(d):
    return _bon_diff(d, _bon_all(d), "wco")


@register(registry=REGISTRY, id="bon_warm_beats_uwo", paper_ref="extension (Coste et al. 2023)",
          finding="Best-of-N: WARM beats UWO (mean − λ·variance, λ = 0.5, standardised "
                  "members) at 1/M of its inference cost", figure="bon",
          statistic=BON_STAT.format(a="WARM of all members", b="UWO"), unit="prompt",
          kind="directional",
          direction=+1)
def bon_warm_beats_uwo(d):
    return _bon_diff(d, _bon_all(d), "uwo")


# --- RL (Figs. 1b, 8-9), all on held-out prompts ---------------------------------------------

def rl_pair(d):
    """(the pinned WARM, `main_warm`: M = 6 where run, "single"), or (None, None)."""
    warm = main_warm(d["eval"])
    return (warm, "single") if warm and "single" in d["eval"] else (None, None)


@register(registry=REGISTRY, id="rl_single_hacking", paper_ref="Fig. 1b",
          finding="RL against a single RM over-optimises: held-out control reward rises, then "
                  "falls well below its peak", figure="rl_steps",
          statistic=f"two parts, per judged prompt, single-RM policy, mean over α: rise = control "
                    f"reward at the peak RL step (chosen on the other half of the held-out "
                    f"prompts) − at step 0 (tested against {RISE_MARGIN:g}); fall = at the peak − "
                    f"at the last step − {FALL_MARGIN:g} (the regime calibration's fall margin). "
                    f"Conditional on the shared held-out prompts",
          unit="prompt", kind="directional", direction=+1, primary=True)
def rl_single_hacking(d):
    rise, fall = collections.defaultdict(list), collections.defaultdict(list)
    for (a, s), rows in eval_runs(d, "single").items():
        r, f = rise_and_fall(rows)
        rise[s].append(r - RISE_MARGIN)
        fall[s].append(f - FALL_MARGIN)
    return part_units({"rise": prompt_means(rise), "fall": prompt_means(fall)})


def _paired_runs(d, a, b):
    """{(α, seed): (rows of a, rows of b)} over the runs both methods finished at one step."""
    A, B = eval_runs(d, a), eval_runs(d, b)
    out = {}
    for k in sorted(set(A) & set(B)):
        if A[k][-1]["step"] != B[k][-1]["step"]:
            raise ValueError(f"{a} and {b} at α={k[0]}, seed {k[1]} end at different steps "
                             f"({A[k][-1]['step']} vs {B[k][-1]['step']}): unfinished run?")
        out[k] = (A[k], B[k])
    return out


def collapse_kl(rows) -> tuple[float, bool]:
    """(KL, collapsed): after the run's peak RL step (picked on the selection prompts), where
    the held-out control reward (mean over the prompts) first falls below its step-0 value, the
    SFT policy's, linearly interpolated in KL between the evaluations either side; a run that
    never falls below it after its peak is censored at its largest KL (collapsed False). Only
    after the peak: a noisy dip while the reward is still rising is not a collapse."""
    rows = from_step0(rows)
    select, _ = halves(rows)
    g0 = rows[0]["control_reward"]
    start = rows.index(peak_row(rows, select))
    for prev, r in zip(rows[start:], rows[start + 1:]):
        if r["control_reward"] < g0:
            gp, gr = prev["control_reward"], r["control_reward"]
            w = (gp - g0) / (gp - gr) if gp > g0 else 0.0
            return float(prev["kl"] + w * (r["kl"] - prev["kl"])), True
    return reach(rows), False


def capped_collapse_gap(rows_a, rows_b) -> float:
    """collapse_kl(a) − collapse_kl(b), both capped at the smaller of the two runs' largest KL, so
    a run that merely travels further, or was censored early, gains nothing."""
    cap = min(reach(rows_a), reach(rows_b))
    return min(collapse_kl(rows_a)[0], cap) - min(collapse_kl(rows_b)[0], cap)


@register(registry=REGISTRY, id="warm_delays_collapse", paper_ref="Fig. 8 / Fig. 1b",
          finding="WARM delays the collapse: its held-out control reward falls below the SFT "
                  "policy's at a larger KL than the single RM's", figure="hacking",
          statistic="per seed, KL to the SFT policy at which the held-out control reward (mean "
                    "over the prompts) first falls below its step-0 value after the run's peak "
                    "step (picked on one half of the prompts; interpolated between evaluations; a "
                    "run that never falls is censored at its largest KL), WARM M − single, both "
                    "capped at the smaller of the two runs' largest KL (censoring never favours "
                    "either), mean over α. Conditional on the shared held-out prompts",
          unit="seed", kind="directional",
          direction=+1, primary=True)
def warm_delays_collapse(d):
    warm, single = rl_pair(d)
    if warm is None:
        return None
    per_seed, detail = collections.defaultdict(list), {}
    for (a, s), (W, S) in _paired_runs(d, warm, single).items():
        per_seed[s].append(capped_collapse_gap(W, S))
        detail[f"alpha={a},seed={s}"] = {m: [round(x, 4) if isinstance(x, float) else x
                                             for x in collapse_kl(rows)]
                                         for m, rows in ((warm, W), (single, S))}
    return seed_units({s: [np.mean(v)] for s, v in per_seed.items()}, a=warm, b=single,
                  collapse_kl_and_collapsed=detail)


@register(registry=REGISTRY, id="warm_smaller_fall", paper_ref="Fig. 8",
          finding="WARM reduces the collapse: at the same KL to the SFT policy, the WARM policy "
                  "has fallen less from its peak than the single-RM policy", figure="hacking",
          statistic="per judged prompt, fall of the single-RM policy − fall of the WARM M policy, "
                    "each at the smaller of the two runs' largest KL (matched KL, so a policy "
                    "that merely moves slower gains nothing), a fall being control reward at the "
                    "run's peak among its evaluations up to that KL (chosen on the other half of "
                    "the held-out prompts) − where the run first reaches that KL (same α, seed "
                    "and prompt), mean over α; each run's largest KL is in extra",
          unit="prompt", kind="directional", direction=+1)
def warm_smaller_fall(d):
    warm, single = rl_pair(d)
    if warm is None:
        return None
    per_seed, kls = collections.defaultdict(list), {}
    for (a, s), (W, S) in _paired_runs(d, warm, single).items():
        cap = min(reach(W), reach(S))
        per_seed[s].append(fall_at_kl(S, cap) - fall_at_kl(W, cap))
        kls[f"alpha={a},seed={s}"] = {warm: round(reach(W), 4), single: round(reach(S), 4)}
    return seed_units(prompt_means(per_seed), a=warm, b=single, largest_kl=kls)


def front_gaps(d, warm, single, budgets=KL_BUDGETS) -> tuple[dict, dict]:
    """Per α: {seed: held-out control reward of WARM − single, interpolated at the KL budgets that
    every run of both methods at that α reaches, mean over those budgets}, and those budgets per α.
    An α where no budget is reached by every run is left out (each α's seeds share one set of
    budgets, so no seed that stopped short is silently judged on fewer). A budget below a run's
    first RL evaluation is interpolated from step 0, where both methods are the SFT policy."""
    W, S = eval_runs(d, warm), eval_runs(d, single)
    at = lambda rows: E.value_at_kl([r["kl"] for r in rows],  # noqa: E731
                                    [r["control_reward"] for r in rows], budgets)
    gaps, used = {}, {}
    for a in sorted({k[0] for k in set(W) & set(S)}):
        diffs = {s: at(W[(a, s)]) - at(S[(a, s)]) for (b, s) in sorted(set(W) & set(S)) if b == a}
        common = [i for i in range(len(budgets)) if all(np.isfinite(x[i]) for x in diffs.values())]
        if common:
            gaps[a] = {s: float(np.mean(x[common])) for s, x in diffs.items()}
            used[a] = [budgets[i] for i in common]
    return gaps, used


def _alphas_and_seeds(d, warm, single, gaps):
    """(α judged, seeds judged at every one of them, what was left out) for the front claims."""
    keys = set(eval_runs(d, warm)) & set(eval_runs(d, single))
    all_alphas, all_seeds = sorted({a for a, _ in keys}), sorted({s for _, s in keys})
    seeds = sorted(set.intersection(*(set(g) for g in gaps.values()))) if gaps else []
    return seeds, {"alphas_without_budget": [a for a in all_alphas if a not in gaps],
                   "seeds_left_out": [s for s in all_seeds if s not in seeds]}


@register(registry=REGISTRY, id="rl_front_at_kl", paper_ref="Fig. 8",
          finding="WARM pushes the KL–control-reward front up: more control reward at the same "
                  "KL to the SFT policy", figure="pareto",
          statistic=f"held-out control reward at the KL budgets of {KL_BUDGETS} that every run of "
                    "both methods at an α reaches (interpolated between evaluations), WARM M − "
                    "single, mean over those budgets, then over the α with such a budget "
                    "(`extra` lists any α or seed left out)", unit="seed",
          kind="directional", direction=+1, primary=True)
def rl_front_at_kl(d):
    warm, single = rl_pair(d)
    if warm is None:
        return None
    gaps, used = front_gaps(d, warm, single)
    if not gaps:
        return None
    seeds, left_out = _alphas_and_seeds(d, warm, single, gaps)
    return seed_units({s: [np.mean([g[s] for g in gaps.values()])] for s in seeds}, a=warm, b=single,
                  budgets={str(a): b for a, b in used.items()}, **left_out)


# --- the α sweep (docs/method.md, Fig. 8: α = 0.01, 0.003, 0.001) ------------------------------------
MIN_SWEEP_ALPHAS = 3


def _sweep(d):
    """(WARM, single, the α values both ran at) when the run swept >= MIN_SWEEP_ALPHAS of them."""
    warm, single = rl_pair(d)
    if warm is None:
        return None
    alphas = sorted({k[0] for k in eval_runs(d, warm)} & {k[0] for k in eval_runs(d, single)})
    return (warm, single, alphas) if len(alphas) >= MIN_SWEEP_ALPHAS else None


@register(registry=REGISTRY, id="rl_front_every_alpha", paper_ref="Fig. 8 (α sweep)",
          finding="WARM's KL–control-reward front lies above the single RM's at every α of the "
                  "sweep", figure="pareto",
          statistic=f"per seed, the smallest over α of (held-out control reward of WARM M − "
                    f"single at the KL budgets of {KL_BUDGETS} that every run at that α reaches, "
                    f"mean over those budgets); needs >= {MIN_SWEEP_ALPHAS} α, each with a budget "
                    "reached. A minimum of noisy gaps is biased low, so it can reproduce (every α "
                    "above) but never contradict", unit="seed", kind="directional", direction=+1,
          can_contradict=False)
def rl_front_every_alpha(d):
    sweep = _sweep(d)
    if sweep is None:
        return None
    warm, single, alphas = sweep
    gaps, used = front_gaps(d, warm, single)
    if sorted(gaps) != alphas:   # an α whose front cannot be compared: "every α" is undecidable
        return None
    seeds, left_out = _alphas_and_seeds(d, warm, single, gaps)
    return seed_units({s: [min(gaps[a][s] for a in alphas)] for s in seeds}, a=warm, b=single,
                  alphas=alphas, gap_per_alpha={str(a): round(float(np.mean(list(g.values()))), 4)
                                                for a, g in gaps.items()},
                  budgets={str(a): b for a, b in used.items()}, **left_out)


def best_by_alpha(d, method, alphas) -> dict[int, dict]:
    """Per seed with a run at every α: each α's rows (in step order)."""
    by_seed = collections.defaultdict(dict)
    for (a, s), rows in eval_runs(d, method).items():
        by_seed[s][a] = rows
    return {s: v for s, v in by_seed.items() if set(v) >= set(alphas)}


def best_step_reward(rows) -> float:
    """Held-out control reward at the run's best RL step: picked on the selection prompts,
    measured on the judged ones (not the last step, where a hacking run has collapsed)."""
    select, judged = halves(rows)
    return float(np.mean(peak_row(rows, select)["gold_per_prompt"][judged]))


@register(registry=REGISTRY, id="warm_lower_best_alpha", paper_ref="Fig. 8 (α sweep)",
          finding="The best KL penalty α is lower for WARM than for the single RM (a more robust "
                  "reward needs less regularisation)", figure="alpha",
          statistic="per seed, least-squares slope over log10 α (the sweep's grid) of the held-out "
                    "control reward at each run's best RL step (chosen on one half of the held-out "
                    "prompts, measured on the other), single − WARM M (> 0: WARM's reward favours "
                    "lower α relative to the single RM's; each method's argmax α is in extra)",
          unit="seed", kind="directional", direction=+1)
def warm_lower_best_alpha(d):
    sweep = _sweep(d)
    if sweep is None:
        return None
    warm, single, alphas = sweep
    if min(alphas) <= 0:
        return None   # log10 α: a sweep that includes α = 0 has no such slope
    W, S = best_by_alpha(d, warm, alphas), best_by_alpha(d, single, alphas)
    x = np.log10(alphas)
    per_seed, best = {}, {warm: {}, single: {}}
    for s in sorted(set(W) & set(S)):
        steps = {W[s][a][-1]["step"] for a in alphas} | {S[s][a][-1]["step"] for a in alphas}
        if len(steps) != 1:
            raise ValueError(f"{warm} and {single} seed {s} end at different steps {sorted(steps)}:"
                             " unfinished run?")
        slope = {}
        for m, runs in ((warm, W[s]), (single, S[s])):
            y = [best_step_reward(runs[a]) for a in alphas]
            slope[m] = float(np.polyfit(x, y, 1)[0])
            best[m][str(s)] = alphas[int(np.argmax(y))]
        per_seed[s] = [slope[single] - slope[warm]]
    return seed_units(per_seed, a=warm, b=single, alphas=alphas, best_alpha=best)


def win_rate_units(d, method, reference, *, judge="gold"):
    """Per prompt of the win-rate half of the held-out prompts: P(reference beats `method`) − 1/2.
    Both policies are taken at their best evaluation step, each chosen by mean control reward on
    the other half (the selection prompts), so neither gains from a lucky pick. judge 'gold': 1 /
    ½ / 0 by gold comparison; 'oracle': the Bradley–Terry preference probability at the
    labeller's temperature."""
    R, X = eval_runs(d, reference), eval_runs(d, method)
    per_seed = collections.defaultdict(list)
    for k in sorted(set(R) & set(X)):
        select, judged = halves(R[k])
        g_ref = np.asarray(best_step(R[k], select)["gold_per_prompt"][judged])
        g_x = np.asarray(best_step(X[k], select)["gold_per_prompt"][judged])
        if judge == "gold":
            p = np.where(g_ref > g_x, 1.0, np.where(g_ref == g_x, 0.5, 0.0))
        else:
            p = 1.0 / (1.0 + np.exp(-(g_ref - g_x) / LABEL_TEMPERATURE))
        per_seed[k[1]].append(p - 0.5)
    return prompt_means(per_seed)


@register(registry=REGISTRY, id="win_rate_warm_vs_single", paper_ref="Fig. 9",
          finding="The WARM policy wins against the single-RM policy (paper: 79.4%)",
          figure="winrates",
          statistic="per win-rate prompt, P(WARM M beats the single-RM policy by gold "
                    "comparison) − 1/2, each at its best step chosen on disjoint prompts; mean over α",
          unit="prompt", kind="directional", direction=+1, primary=True)
def win_rate_warm_vs_single(d):
    warm, single = rl_pair(d)
    if warm is None:
        return None
    oracle = win_rate_units(d, single, warm, judge="oracle")
    return seed_units(win_rate_units(d, single, warm), reference=warm, method=single,
                  oracle_judge_win_rate=(0.5 + float(np.mean([v.mean() for v in oracle.values()]))
                                         if oracle else None))


def _against_sft(d, method):
    """Per judged prompt, P(`method` at its best step beats the SFT policy) − 1/2, by gold
    comparison. The SFT policy is the run's own step-0 evaluation (its parameters before RL)."""
    per_seed = collections.defaultdict(list)
    for (a, s), rows in eval_runs(d, method).items():
        if rows[0]["step"] != 0:
            continue
        select, judged = halves(rows)
        g = np.asarray(best_step(rows, select)["gold_per_prompt"][judged])
        g0 = np.asarray(rows[0]["gold_per_prompt"][judged])
        per_seed[s].append(np.where(g > g0, 1.0, np.where(g == g0, 0.5, 0.0)) - 0.5)
    return seed_units(prompt_means(per_seed), method=method)


@register(registry=REGISTRY, id="win_rate_warm_vs_sft", paper_ref="slides (99.8%)",
          finding="The WARM RL policy wins against the SFT policy", figure="winrates",
          statistic="per judged prompt, P(WARM M at its best step, chosen on disjoint prompts, "
                    "beats the SFT policy by gold comparison) − 1/2, mean over α", unit="prompt",
          kind="directional", direction=+1)
def win_rate_warm_vs_sft(d):
    warm, _ = rl_pair(d)
    return _against_sft(d, warm) if warm else None


@register(registry=REGISTRY, id="win_rate_single_vs_sft", paper_ref="slides (98.5%)",
          finding="The single-RM RL policy wins against the SFT policy", figure="winrates",
          statistic="per judged prompt, P(single-RM policy at its best step, chosen on disjoint "
                    "prompts, beats the SFT policy by gold comparison) − 1/2, mean over α",
          unit="prompt",
          kind="directional", direction=+1)
def win_rate_single_vs_sft(d):
    return _against_sft(d, "single") if d["eval"].get("single") else None


@register(registry=REGISTRY, id="gao_fit", paper_ref="Gao et al. 2023",
          finding="Control-reward gain against d = √KL follows Gao et al.'s forms (best-of-N: "
                  "d(α − βd))", figure="gao",
          statistic="R² of the best-of-N fit per seed, mean over methods", unit="seed",
          kind="descriptive")
def gao_fits(d):
    per_seed, fits = collections.defaultdict(list), {}
    for (s, m) in sorted({(r["seed"], r["method"]) for r in d["bon"] if "n" in r}):
        rows = [r for r in d["bon"] if r.get("seed") == s and r["method"] == m and "n" in r]
        try:
            fit = gao_fit([r["kl_bon"] for r in rows], [r["gold_gain"] for r in rows], "bon")
        except ValueError:
            continue
        fits[f"seed={s}/{m}"] = fit
        if np.isfinite(fit["r2"]):
            per_seed[s].append(fit["r2"])
    return seed_units({s: [np.mean(v)] for s, v in per_seed.items()}, fits=fits)
