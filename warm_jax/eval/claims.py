"""WARM's findings, one registry entry each, decided from a work directory's JSONL alone.

Every claim is declared here, before any run (`warm_jax.eval.evidence.register`): the finding,
the paper's figure, the statistic and its unit, the paper's sign (or an equivalence margin).
Its compute function turns the loaded run into `Units`: per chain seed, paired unit-level
differences (WA − ENS correctness on the same evaluation pair; method A − B on the same prompt) or
one number per seed. `evidence.decide` then gives the outcome (reproduced / contradicted /
inconclusive) from a paired, seed-aware interval: a tie is never "reproduced".

Method names and M come from the run (its `warm_M<k>` rewards), never from a hard-coded M.
"""
from __future__ import annotations

import collections
import glob
import os
import re
from typing import Any

import numpy as np

from warm_jax.eval import evidence as E
from warm_jax.eval.evidence import Units, register
from warm_jax.eval.metrics import gao_fit
from warm_jax.layout import RunLayout
from warm_jax.metrics import read_jsonl

ID_DELTA = 0.02          # |WA − ENS| accuracy on the ID split that still counts as "WA ≈ ENS"
HACK_MARGIN = 0.1        # control-reward drop from its peak that counts as hacking
# where the RL fronts are compared (KL to the SFT policy); a claim uses those every run reaches
KL_BUDGETS = (0.25, 0.5, 1.0, 2.0, 4.0)
# nearest the training data first; "ood" is the run's OOD split (`ood_split`)
TREND_SUBSETS = ("train_corrupt", "train_clean", "validation", "ood")
OOD_NOTE = ("the sampled `ood` split: response pairs of the pretrained and SFT policies; in runs "
            "without it, the offline `test` split")
LABEL_TEMPERATURE = 0.8  # the preference oracle's Bradley–Terry temperature (the toy labeller's)
REGISTRY: dict = {}


def _rows(path):
    return read_jsonl(path) if os.path.exists(path) else []


def _seed_of(path: str) -> int:
    return int(path.rsplit("seed_", 1)[1])


def load(workdir: str, rm_name: str = "clean") -> dict[str, Any]:
    """Every JSONL a claim or figure reads, per chain seed where it has one."""
    layout = RunLayout(workdir)
    analysis = {}
    for name in ("clean", "corrupt"):
        chains = sorted(glob.glob(os.path.join(layout.rm(name), "seed_*")), key=_seed_of)
        analysis[name] = {_seed_of(c): _rows(os.path.join(c, "analysis.jsonl")) for c in chains}
    rl_dir = layout.rl(rm_name)
    methods = sorted(os.path.basename(os.path.dirname(p))
                     for p in glob.glob(os.path.join(rl_dir, "*", "train.jsonl")))
    per_method = lambda f: {m: _rows(os.path.join(rl_dir, m, f)) for m in methods}  # noqa: E731
    return {"analysis": analysis, "bon": _rows(layout.bon(rm_name)),
            "train": per_method("train.jsonl"), "eval": per_method("eval.jsonl"),
            "final": per_method("final.jsonl")}


def warm_names(methods) -> list[str]:
    """The run's WARM rewards of M >= 2, smallest M first (warm_M1 is the single RM)."""
    return sorted((m for m in methods if re.fullmatch(r"warm_M\d+", m) and m != "warm_M1"),
                  key=lambda m: int(m[len("warm_M"):]))


def _per_prompt(per_seed: dict) -> dict:
    """One unit per prompt and seed: a seed's α runs share their prompts, so their per-prompt
    values are averaged over α (not concatenated, which would count each prompt once per α)."""
    return {s: np.mean(np.stack(v), 0) for s, v in per_seed.items()}


def _units(per_seed: dict, **extra) -> Units | None:
    seeds = sorted(s for s, v in per_seed.items() if v is not None and np.size(v))
    if not seeds:
        return None
    return Units([per_seed[s] for s in seeds], extra={"seeds": seeds, **extra})


# --- reward models (Figs. 3-5) ----------------------------------------------------------------

def ood_split(rows) -> str:
    """The run's OOD split: the sampled `ood` pairs (`warm_jax.ood`) where the analyses have them,
    else the offline `test` pairs of the shifted response policy (runs without that stage)."""
    return "ood" if any(r.get("split") == "ood" for r in rows) else "test"


def _unit_values(rows, analysis, split, what):
    vals = [r["values"] for r in rows if r.get("analysis") == analysis and r["split"] == split
            and r.get("what") == what]
    return np.concatenate(vals) if vals else None


def _lmc_units(rows, split, what):
    """Per evaluation pair, the mean over the member pairs of increasing diversity (not the
    'same_run' pair, which is a control): each evaluation pair is one unit, counted once."""
    vals = [r["values"] for r in rows if r.get("analysis") == "lmc_units" and r["split"] == split
            and r.get("what") == what and r.get("pair") != "same_run"]
    return np.mean(vals, 0) if vals else None


def _split_units(d, name, split, what="wa_minus_ens"):
    """`split` "ood" is each seed's `ood_split`."""
    per_seed, used = {}, set()
    for s, rows in d["analysis"][name].items():
        sp = ood_split(rows) if split == "ood" else split
        used.add(sp)
        per_seed[s] = _unit_values(rows, "units", sp, what)
    return _units(per_seed, labels=name, split="/".join(sorted(used)) or split)


@register(registry=REGISTRY, id="lmc_above_diag", paper_ref="Fig. 3",
          finding="WA of two members sits above the diagonal between them (linear mode "
                  "connectivity)", figure="lmc",
          statistic="correctness of WA((1−λ)φa + λφb) − ((1−λ)·correct_a + λ·correct_b), mean "
                    "over interior λ and over the diversity member pairs, per evaluation pair "
                    "(validation and OOD)",
          unit="pair", kind="directional", direction=+1)
def lmc_above_diag(d):
    per_seed = {}
    for s, rows in d["analysis"]["clean"].items():
        parts = [_lmc_units(rows, sp, "wa_minus_diag") for sp in ("validation", ood_split(rows))]
        parts = [p for p in parts if p is not None]
        per_seed[s] = np.concatenate(parts) if parts else None
    return _units(per_seed)


@register(registry=REGISTRY, id="lmc_wa_approx_ens", paper_ref="Fig. 3",
          finding="Along the path between two members, WA ≈ ENS in distribution",
          figure="lmc", statistic="correctness of WA(λ) − ENS(λ), mean over interior λ and over "
                                  "the diversity member pairs, per validation pair",
          unit="pair", kind="equivalence", delta=ID_DELTA)
def lmc_wa_approx_ens(d):
    return _units({s: _lmc_units(rows, "validation", "wa_minus_ens")
                   for s, rows in d["analysis"]["clean"].items()})


@register(registry=REGISTRY, id="wa_approx_ens_id", paper_ref="Fig. 4",
          finding="WA ≈ ENS in distribution (clean labels, all M members)", figure="corruption",
          statistic="correctness of WA − ENS per validation pair", unit="pair",
          kind="equivalence", delta=ID_DELTA)
def wa_approx_ens_id(d):
    return _split_units(d, "clean", "validation")


@register(registry=REGISTRY, id="wa_memorises_less", paper_ref="Figs. 4-5",
          finding="With 25% flipped labels, WA fits the flipped training labels less than ENS",
          figure="corruption", statistic="agreement with the flipped label, WA − ENS, per "
                                         "corrupted training pair", unit="pair",
          kind="directional", direction=-1)
def wa_memorises_less(d):
    return _split_units(d, "corrupt", "train_corrupt")


@register(registry=REGISTRY, id="wa_beats_ens_ood", paper_ref="Fig. 5",
          finding="Out of distribution WA beats ENS (clean labels)", figure="corruption",
          statistic=f"correctness of WA − ENS per OOD pair ({OOD_NOTE})", unit="pair",
          kind="directional", direction=+1)
def wa_beats_ens_ood(d):
    return _split_units(d, "clean", "ood")


@register(registry=REGISTRY, id="wa_beats_ens_ood_corrupt", paper_ref="Fig. 5",
          finding="Out of distribution WA beats ENS (25% flipped labels)", figure="corruption",
          statistic=f"correctness of WA − ENS per OOD pair ({OOD_NOTE})", unit="pair",
          kind="directional", direction=+1)
def wa_beats_ens_ood_corrupt(d):
    return _split_units(d, "corrupt", "ood")


@register(registry=REGISTRY, id="wa_vs_ens_grows_off_train", paper_ref="Fig. 5",
          finding="The further from the training distribution, the better WA against ENS "
                  "(25% flipped labels: train-corrupt, train-clean, validation, OOD)",
          figure="corruption",
          statistic="per seed, least-squares slope of mean(WA − ENS correctness) over the subsets "
                    f"{TREND_SUBSETS} at positions 0, 1, 2, 3", unit="seed", kind="directional",
          direction=+1)
def wa_vs_ens_grows_off_train(d):
    per_seed = {}
    for s, rows in d["analysis"]["corrupt"].items():
        means = [_unit_values(rows, "units", ood_split(rows) if k == "ood" else k, "wa_minus_ens")
                 for k in TREND_SUBSETS]
        if all(m is not None for m in means):
            per_seed[s] = [float(np.polyfit(np.arange(len(means)), [m.mean() for m in means], 1)[0])]
    return _units(per_seed, subsets=list(TREND_SUBSETS))


# --- best-of-N (Figs. 6-7) --------------------------------------------------------------------

def _bon_auc(d, method) -> dict[int, np.ndarray]:
    return {r["seed"]: np.asarray(r["values"]) for r in d["bon"]
            if r.get("analysis") == "auc" and r["method"] == method}


def _bon_diff(d, a, b):
    if a is None or b is None:
        return None
    A, B = _bon_auc(d, a), _bon_auc(d, b)
    return _units({s: A[s] - B[s] for s in sorted(set(A) & set(B))}, a=a, b=b)


def _bon_methods(d):
    return warm_names({r["method"] for r in d["bon"]})


BON_STAT = ("per prompt, area under the unbiased best-of-n control-reward gain over log2 n "
            "(n = 1 … N), {a} − {b}")


@register(registry=REGISTRY, id="bon_warm_beats_smaller_m", paper_ref="Figs. 6-7",
          finding="Best-of-N: WARM with the largest M beats WARM M=2", figure="bon",
          statistic=BON_STAT.format(a="WARM M", b="WARM M=2"), unit="prompt",
          kind="directional", direction=+1)
def bon_warm_beats_smaller_m(d):
    w = _bon_methods(d)
    return _bon_diff(d, w[-1], w[0]) if len(w) >= 2 else None


@register(registry=REGISTRY, id="bon_warm_beats_single", paper_ref="Figs. 6-7",
          finding="Best-of-N: WARM M=2 beats the single (best) RM", figure="bon",
          statistic=BON_STAT.format(a="WARM M=2", b="single"), unit="prompt",
          kind="directional", direction=+1)
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


@register(registry=REGISTRY, id="bon_warm_beats_ens_all", paper_ref="extension",
          finding="Best-of-N: WARM (largest M) beats ENS of all the members", figure="bon",
          statistic=BON_STAT.format(a="WARM M", b="ENS of all members"), unit="prompt",
          kind="directional", direction=+1)
def bon_warm_beats_ens_all(d):
    w = _bon_methods(d)
    return _bon_diff(d, w[-1] if w else None, "ens")


@register(registry=REGISTRY, id="bon_warm_beats_wco", paper_ref="extension (Coste et al. 2023)",
          finding="Best-of-N: WARM beats WCO (worst case over standardised members) at 1/M of "
                  "its inference cost", figure="bon",
          statistic=BON_STAT.format(a="WARM M", b="WCO"), unit="prompt", kind="directional",
          direction=+1)
def bon_warm_beats_wco(d):
    w = _bon_methods(d)
    return _bon_diff(d, w[-1] if w else None, "wco")


@register(registry=REGISTRY, id="bon_warm_beats_uwo", paper_ref="extension (Coste et al. 2023)",
          finding="Best-of-N: WARM beats UWO (mean − λ·variance, λ = 0.5, standardised "
                  "members) at 1/M of its inference cost", figure="bon",
          statistic=BON_STAT.format(a="WARM M", b="UWO"), unit="prompt", kind="directional",
          direction=+1)
def bon_warm_beats_uwo(d):
    w = _bon_methods(d)
    return _bon_diff(d, w[-1] if w else None, "uwo")


# --- RL (Figs. 1b, 8-9), all on held-out prompts ---------------------------------------------

def _evals(d, method) -> dict[tuple, list[dict]]:
    """{(alpha, seed): held-out evaluation rows in step order}."""
    out = collections.defaultdict(list)
    for r in d["eval"].get(method, []):
        out[(r["run_alpha"], r["seed"])].append(r)
    return {k: sorted(v, key=lambda r: r["step"]) for k, v in out.items()}


def _rl_pair(d):
    w = warm_names(d["eval"])
    return (w[-1], "single") if w and "single" in d["eval"] else (None, None)


def _halves(rows):
    """(selection, judged) slices of the held-out prompts: a step picked on the first half is
    judged on the second, so the pick's luck on its own prompts does not inflate what is judged."""
    n = len(rows[0]["gold_per_prompt"])
    if n < 2 or any(len(r["gold_per_prompt"]) != n for r in rows):
        raise ValueError(f"held-out evaluations need >= 2 prompts, the same at every step; got "
                         f"{sorted({len(r['gold_per_prompt']) for r in rows})}")
    return slice(0, n // 2), slice(n // 2, None)


def _best_step(rows, select):
    """The evaluation row of highest mean control reward on the selection prompts."""
    return max(rows, key=lambda r: np.mean(r["gold_per_prompt"][select]))


@register(registry=REGISTRY, id="rl_single_hacking", paper_ref="Fig. 1b",
          finding="RL against a single RM over-optimises: held-out control reward rises, then "
                  "falls by more than the hacking margin", figure="rl_steps",
          statistic=f"per judged prompt, control reward at the peak RL step (chosen on the "
                    f"other half of the held-out prompts) − at the final step − {HACK_MARGIN}, "
                    f"single-RM policy, mean over α (the rise from step 0 to the peak is in "
                    f"extra)", unit="prompt", kind="directional",
          direction=+1)
def rl_single_hacking(d):
    per_seed, rise = collections.defaultdict(list), {}
    for (a, s), rows in _evals(d, "single").items():
        select, judged = _halves(rows)
        trained = [r for r in rows if r["step"] > 0] or rows   # the peak is an RL step
        peak = np.asarray(_best_step(trained, select)["gold_per_prompt"][judged])
        final = np.asarray(rows[-1]["gold_per_prompt"][judged])
        per_seed[s].append(peak - final - HACK_MARGIN)
        rise[f"alpha={a},seed={s}"] = round(float(peak.mean() - np.mean(
            rows[0]["gold_per_prompt"][judged])), 4)
    return _units(_per_prompt(per_seed), rise_to_peak=rise)


@register(registry=REGISTRY, id="larger_m_delays_collapse", paper_ref="Fig. 8",
          finding="After the same RL steps, the WARM policy keeps more control reward than the "
                  "single-RM policy", figure="rl_steps",
          statistic="final held-out control reward per prompt, WARM M − single (same α, seed "
                    "and prompt), mean over α", unit="prompt", kind="directional", direction=+1)
def larger_m_delays_collapse(d):
    warm, single = _rl_pair(d)
    if warm is None:
        return None
    W, S = _evals(d, warm), _evals(d, single)
    per_seed = collections.defaultdict(list)
    for k in sorted(set(W) & set(S)):
        if W[k][-1]["step"] != S[k][-1]["step"]:
            raise ValueError(f"{warm} and {single} at α={k[0]}, seed {k[1]} end at different "
                             f"steps ({W[k][-1]['step']} vs {S[k][-1]['step']}): unfinished run?")
        per_seed[k[1]].append(np.subtract(W[k][-1]["gold_per_prompt"],
                                          S[k][-1]["gold_per_prompt"]))
    return _units(_per_prompt(per_seed), a=warm, b=single)


@register(registry=REGISTRY, id="rl_front_at_kl", paper_ref="Fig. 8",
          finding="WARM pushes the KL–control-reward front up: more control reward at the same "
                  "KL to the SFT policy", figure="pareto",
          statistic=f"held-out control reward at the KL budgets of {KL_BUDGETS} that every run of "
                    "both methods reaches (interpolated between evaluations), WARM M − single, "
                    "mean over those budgets and α", unit="seed", kind="directional",
          direction=+1)
def rl_front_at_kl(d):
    warm, single = _rl_pair(d)
    if warm is None:
        return None
    W, S = _evals(d, warm), _evals(d, single)
    keys = sorted(set(W) & set(S))
    at = lambda rows: E.value_at_kl([r["kl"] for r in rows],  # noqa: E731
                                    [r["control_reward"] for r in rows], KL_BUDGETS)
    diffs = {k: at(W[k]) - at(S[k]) for k in keys}
    # a budget counts only where every run reached it: every seed is then judged on the same
    # budgets (a seed that stopped short is not silently dropped from the interval)
    common = [i for i in range(len(KL_BUDGETS)) if all(np.isfinite(x[i]) for x in diffs.values())]
    if not common:
        return None
    per_seed = collections.defaultdict(list)
    for k, x in diffs.items():
        per_seed[k[1]] += [x[i] for i in common]
    return _units({s: [np.mean(v)] for s, v in per_seed.items()}, a=warm, b=single,
                  budgets=[KL_BUDGETS[i] for i in common])


def win_rate_units(d, method, reference, *, judge="gold"):
    """Per prompt of the win-rate half of the held-out prompts: P(reference beats `method`) − 1/2.
    Both policies are taken at their best evaluation step, each chosen by mean control reward on
    the other half (the selection prompts), so neither gains from a lucky pick. judge 'gold': 1 /
    ½ / 0 by gold comparison; 'oracle': the Bradley–Terry preference probability at the
    labeller's temperature."""
    R, X = _evals(d, reference), _evals(d, method)
    per_seed = collections.defaultdict(list)
    for k in sorted(set(R) & set(X)):
        select, judged = _halves(R[k])
        g_ref = np.asarray(_best_step(R[k], select)["gold_per_prompt"][judged])
        g_x = np.asarray(_best_step(X[k], select)["gold_per_prompt"][judged])
        if judge == "gold":
            p = np.where(g_ref > g_x, 1.0, np.where(g_ref == g_x, 0.5, 0.0))
        else:
            p = 1.0 / (1.0 + np.exp(-(g_ref - g_x) / LABEL_TEMPERATURE))
        per_seed[k[1]].append(p - 0.5)
    return _per_prompt(per_seed)


@register(registry=REGISTRY, id="win_rate_warm_vs_single", paper_ref="Fig. 9",
          finding="The WARM policy wins against the single-RM policy (paper: 79.4%)",
          figure="winrates",
          statistic="per win-rate prompt, P(WARM M beats the single-RM policy by gold "
                    "comparison) − 1/2, each at its best step chosen on disjoint prompts; mean over α",
          unit="prompt", kind="directional", direction=+1)
def win_rate_warm_vs_single(d):
    warm, single = _rl_pair(d)
    if warm is None:
        return None
    oracle = win_rate_units(d, single, warm, judge="oracle")
    return _units(win_rate_units(d, single, warm), reference=warm, method=single,
                  oracle_judge_win_rate=(0.5 + float(np.mean([v.mean() for v in oracle.values()]))
                                         if oracle else None))


def _against_sft(d, method):
    """Per judged prompt, P(`method` at its best step beats the SFT policy) − 1/2, by gold
    comparison. The SFT policy is the run's own step-0 evaluation (its parameters before RL)."""
    per_seed = collections.defaultdict(list)
    for (a, s), rows in _evals(d, method).items():
        if rows[0]["step"] != 0:
            continue
        select, judged = _halves(rows)
        g = np.asarray(_best_step(rows, select)["gold_per_prompt"][judged])
        g0 = np.asarray(rows[0]["gold_per_prompt"][judged])
        per_seed[s].append(np.where(g > g0, 1.0, np.where(g == g0, 0.5, 0.0)) - 0.5)
    return _units(_per_prompt(per_seed), method=method)


@register(registry=REGISTRY, id="win_rate_warm_vs_sft", paper_ref="slides (99.8%)",
          finding="The WARM RL policy wins against the SFT policy", figure="winrates",
          statistic="per judged prompt, P(WARM M at its best step, chosen on disjoint prompts, "
                    "beats the SFT policy by gold comparison) − 1/2, mean over α", unit="prompt",
          kind="directional", direction=+1)
def win_rate_warm_vs_sft(d):
    warm, _ = _rl_pair(d)
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
    return _units({s: [np.mean(v)] for s, v in per_seed.items()}, fits=fits)


def compute_claims(workdir: str, **decide_kw) -> list[dict]:
    return E.evaluate(load(workdir), registry=REGISTRY, **decide_kw)
