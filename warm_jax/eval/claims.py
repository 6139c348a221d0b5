"""WARM's findings as checks computed from a work directory's metrics JSONL — never written by hand.

Each claim returns {claim, finding, reproduced (True/False/None when its inputs are missing),
numbers, spread}. Thresholds are fixed here, before any run, and stated in `rule`.
"""
from __future__ import annotations

import collections
import glob
import os
from typing import Any

import numpy as np

from warm_jax.eval.metrics import gao_fit, pareto_front, win_rate
from warm_jax.layout import RunLayout
from warm_jax.metrics import read_jsonl

ID_TOLERANCE = 0.02     # |WA − ENS| on the ID split that still counts as "WA ≈ ENS"
HACK_MARGIN = 0.1       # control-reward drop from its peak that counts as hacking
R2_MIN = 0.7            # a Gao form "describes" a curve when R² reaches this


def _rows(path):
    return read_jsonl(path) if os.path.exists(path) else []


def load(workdir: str, rm_name: str = "clean") -> dict[str, Any]:
    layout = RunLayout(workdir)
    rl_dir = layout.rl(rm_name)
    methods = sorted(os.path.basename(os.path.dirname(p))
                     for p in glob.glob(os.path.join(rl_dir, "*", "train.jsonl")))
    return {
        "analysis": {n: _rows(os.path.join(layout.rm(n), "analysis.jsonl"))
                     for n in ("clean", "corrupt")},
        "bon": _rows(layout.bon(rm_name)),
        "train": {m: _rows(os.path.join(rl_dir, m, "train.jsonl")) for m in methods},
        "final": {m: _rows(os.path.join(rl_dir, m, "final.jsonl")) for m in methods},
    }


FINDINGS = {
    'lmc_above_diag': 'WA of two members sits above the diagonal (linear mode connectivity), WA ≈ ENS along the path',
    'wa_approx_ens_id': 'WA ≈ ENS in distribution (clean labels)',
    'wa_memorises_less': 'With 25% flipped labels WA fits the corrupted labels less than ENS (Fig. 4–5)',
    'wa_ood_at_least_ens': 'WA is at least as good as ENS out of distribution',
    'bon_ordering': 'Best-of-N: WARM M=6 > WARM M=2 > single RM (Fig. 6–7)',
    'rl_single_hacking': 'RL against a single RM: proxy rises while control reward rises then collapses (Fig. 1b)',
    'larger_m_delays_collapse': 'Larger M delays the collapse: after the same RL steps, WARM M=6 keeps more control reward than a single RM (Fig. 8)',
    'pareto_front': 'WARM pushes the KL–control-reward front up and left',
    'win_rate_warm_vs_single': 'The WARM M=6 policy wins against the single-RM policy (paper: 79.4%)',
    'gao_fit': "Gold reward against d = √KL follows Gao et al.'s forms",
    'warm_vs_wco_uwo': 'WARM M=6 does at least as well as the WCO and UWO ensembles (Coste et al.), at 1/M of their inference cost',
}


def _claim(claim, finding, reproduced, rule, numbers, spread=None):
    return {"claim": claim, "finding": finding or FINDINGS.get(claim, ""),
            "reproduced": reproduced, "rule": rule, "numbers": numbers, "spread": spread}


def _corruption_acc(rows, model_prefix, split):
    vals = [r["acc"] for r in rows if r["analysis"] == "corruption"
            and r["model"].startswith(model_prefix) and r["split"] == split]
    return vals[0] if vals else None


def _se(rows, split, p=0.65):
    """Binomial standard error of one accuracy on `split` (the scale of its evaluation noise)."""
    sizes = next((r["sizes"] for r in rows if r["analysis"] == "eval_sizes"), {})
    n = sizes.get(split)
    return float(np.sqrt(p * (1 - p) / n)) if n else None


def lmc_above_diag(d):
    rows = [r for r in d["analysis"]["clean"] if r["analysis"] == "lmc" and 0 < r["lambda"] < 1
            and r["split"] in ("validation", "test")]
    if not rows:
        return _claim("lmc_above_diag", "Fig. 3", None, "inputs missing", {})
    by_pair = collections.defaultdict(list)
    for r in rows:
        by_pair[r["pair"]].append(r["wa"] - r["diag"])
    gaps = {p: float(np.mean(v)) for p, v in by_pair.items()}
    ens_gap = float(np.mean([r["wa"] - r["ens"] for r in rows]))
    return _claim("lmc_above_diag", "WA of two members sits above the diagonal (linear mode "
                  "connectivity), WA ≈ ENS along the path", all(g > 0 for g in gaps.values()),
                  "mean over interior λ and ID+OOD splits of (WA − diag) > 0 for every pair",
                  {"wa_minus_diag_by_pair": gaps, "wa_minus_ens_mean": ens_gap,
                   "accuracy_se_test": _se(d["analysis"]["clean"], "test")},
                  {"pairs_above": sum(g > 0 for g in gaps.values()), "pairs": len(gaps)})


def wa_approx_ens_id(d):
    rows = d["analysis"]["clean"]
    wa, ens = _corruption_acc(rows, "wa_M", "validation"), _corruption_acc(rows, "ens_M", "validation")
    if wa is None:
        return _claim("wa_approx_ens_id", "", None, "inputs missing", {})
    pairs = [r["wa_minus_ens"] for r in rows if r["analysis"] == "corruption_pair"
             and r["split"] == "validation"]
    return _claim("wa_approx_ens_id", "WA ≈ ENS in distribution (clean labels)",
                  abs(wa - ens) <= ID_TOLERANCE, f"|WA − ENS| ≤ {ID_TOLERANCE} on validation",
                  {"wa": wa, "ens": ens, "accuracy_se": _se(rows, "validation")}, {"pair_wa_minus_ens_mean": float(np.mean(pairs)),
                                           "pair_wa_minus_ens_std": float(np.std(pairs))})


def wa_memorises_less(d):
    rows = d["analysis"]["corrupt"]
    out = {s: (_corruption_acc(rows, "wa_M", s), _corruption_acc(rows, "ens_M", s))
           for s in ("train_corrupt", "train_clean", "validation", "test")}
    if out["train_corrupt"][0] is None:
        return _claim("wa_memorises_less", "", None, "inputs missing", {})
    pairs = [r["wa_minus_ens"] for r in rows if r["analysis"] == "corruption_pair"
             and r["split"] == "train_corrupt"]
    wa, ens = out["train_corrupt"]
    return _claim("wa_memorises_less", "With 25% flipped labels WA fits the corrupted labels less "
                  "than ENS (Fig. 4–5)", wa < ens, "WA < ENS on train_corrupt",
                  {**{s: {"wa": v[0], "ens": v[1]} for s, v in out.items()},
                   "accuracy_se_train_corrupt": _se(rows, "train_corrupt")},
                  {"pairs_wa_below_ens": int(sum(p < 0 for p in pairs)), "pairs": len(pairs)})


def wa_ood_at_least_ens(d):
    nums = {}
    for name in ("corrupt", "clean"):
        rows = d["analysis"][name]
        nums[name] = {"wa": _corruption_acc(rows, "wa_M", "test"),
                      "ens": _corruption_acc(rows, "ens_M", "test"),
                      "accuracy_se": _se(rows, "test")}
    if nums["corrupt"]["wa"] is None:
        return _claim("wa_ood_at_least_ens", "", None, "inputs missing", {})
    ok = all(v["wa"] >= v["ens"] for v in nums.values() if v["wa"] is not None)
    return _claim("wa_ood_at_least_ens", "WA is at least as good as ENS out of distribution",
                  ok, "WA ≥ ENS on the OOD test split, with clean and with corrupted labels", nums)


def bon_ordering(d):
    rows = d["bon"]
    if not rows:
        return _claim("bon_ordering", "", None, "inputs missing", {})
    n_max = max(r["n"] for r in rows)
    gold = {r["method"]: r["gold_gain"] for r in rows if r["n"] == n_max}
    peak = {}
    for r in rows:  # each method's best n: where over-optimisation has not set in yet
        if r["method"] not in peak or r["gold_gain"] > peak[r["method"]]["gold_gain"]:
            peak[r["method"]] = {"n": r["n"], "gold_gain": r["gold_gain"]}
    order = [m for m in ("warm_M6", "warm_M2", "single") if m in gold]
    ok = all(gold[a] >= gold[b] for a, b in zip(order, order[1:])) if len(order) > 1 else None
    return _claim("bon_ordering", "Best-of-N: WARM M=6 > WARM M=2 > single RM (Fig. 6–7)", ok,
                  f"control-reward gain at N={n_max} ordered warm_M6 ≥ warm_M2 ≥ single",
                  {"n": n_max, "gold_gain": gold, "peak": peak})


def _runs(d, method):
    """{(alpha, seed): rows sorted by step} for one method's RL runs."""
    out = collections.defaultdict(list)
    for r in d["train"].get(method, []):
        out[(r["run_alpha"], r["seed"])].append(r)
    return {k: sorted(v, key=lambda r: r["step"]) for k, v in out.items()}


def rl_single_hacking(d):
    runs = _runs(d, "single")
    if not runs:
        return _claim("rl_single_hacking", "", None, "inputs missing", {})
    nums = {}
    for (a, s), rows in runs.items():
        ctrl = np.array([r["control_reward"] for r in rows])
        proxy = np.array([r["proxy_reward"] for r in rows])
        k = max(1, len(rows) // 10)  # smooth over a tenth of the run
        cs = np.convolve(ctrl, np.ones(k) / k, "valid")
        ps = np.convolve(proxy, np.ones(k) / k, "valid")
        nums[f"alpha={a},seed={s}"] = {"peak_control": float(cs.max()), "final_control": float(cs[-1]),
                                       "proxy_start": float(ps[0]), "proxy_final": float(ps[-1])}
    hacked = [v["peak_control"] - v["final_control"] > HACK_MARGIN and v["proxy_final"] > v["proxy_start"]
              for v in nums.values()]
    return _claim("rl_single_hacking", "RL against a single RM: proxy rises while control reward "
                  "rises then collapses (Fig. 1b)", any(hacked),
                  f"for some α, smoothed control falls > {HACK_MARGIN} below its peak while the "
                  "proxy ends above its start", nums, {"runs_hacked": sum(hacked), "runs": len(hacked)})


def _final_by_alpha(d, method):
    out = collections.defaultdict(list)
    for r in d["final"].get(method, []):
        out[r["run_alpha"]].append(r)
    return out


def larger_m_delays_collapse(d):
    single, warm = _final_by_alpha(d, "single"), _final_by_alpha(d, "warm_M6")
    alphas = sorted(set(single) & set(warm))
    if not alphas:
        return _claim("larger_m_delays_collapse", "", None, "inputs missing", {})
    nums, spread = {}, {}
    for a in alphas:
        nums[str(a)] = {m: float(np.mean([r["control_reward"] for r in rows[a]]))
                        for m, rows in (("single", single), ("warm_M6", warm))}
        for m in ("warm_M2", "ens", "wco", "uwo"):
            rows = _final_by_alpha(d, m).get(a)
            if rows:
                nums[str(a)][m] = float(np.mean([r["control_reward"] for r in rows]))
        spread[str(a)] = {m: float(np.std([r["control_reward"] for r in rows[a]]))
                          for m, rows in (("single", single), ("warm_M6", warm))}
    ok = all(v["warm_M6"] > v["single"] for v in nums.values())
    return _claim("larger_m_delays_collapse", "Larger M delays the collapse: after the same RL "
                  "steps, WARM M=6 keeps more control reward than a single RM (Fig. 8)", ok,
                  "final held-out control reward, WARM M=6 > single, at every α (mean over seeds)",
                  nums, spread)


def pareto(d):
    def points(method):
        rows = d["train"].get(method, [])
        return [r["kl"] for r in rows], [r["control_reward"] for r in rows]
    if not d["train"].get("single") or not d["train"].get("warm_M6"):
        return _claim("pareto_front", "", None, "inputs missing", {})
    levels = {}
    for method in ("single", "warm_M2", "warm_M6", "ens"):
        kl, ctrl = points(method)
        if not kl:
            continue
        front = pareto_front(kl, ctrl)
        levels[method] = {f"kl<={k}": max([ctrl[i] for i in front if kl[i] <= k], default=None)
                          for k in (1, 2, 4, 8)}
    wins = [levels["warm_M6"][k] >= levels["single"][k] for k in levels["single"]
            if levels["single"][k] is not None and levels["warm_M6"][k] is not None]
    return _claim("pareto_front", "WARM pushes the KL–control-reward front up and left", 
                  (sum(wins) > len(wins) / 2) if wins else None,
                  "best control reward within KL budgets 1, 2, 4, 8 (all α, seeds, logged steps): "
                  "WARM M=6 ≥ single on most budgets", levels)


def win_rate_warm_vs_single(d):
    a_rows, b_rows = d["final"].get("warm_M6", []), d["final"].get("single", [])
    key = lambda r: (r["run_alpha"], r["seed"])  # noqa: E731
    b = {key(r): r for r in b_rows}
    ga, gb = [], []
    for r in a_rows:
        if key(r) in b and "gold_per_prompt" in r:
            ga += r["gold_per_prompt"]
            gb += b[key(r)]["gold_per_prompt"]
    if not ga:
        return _claim("win_rate_warm_vs_single", "", None, "inputs missing", {})
    wr = win_rate(np.array(ga), np.array(gb))
    return _claim("win_rate_warm_vs_single", "The WARM M=6 policy wins against the single-RM "
                  "policy (paper: 79.4%)", wr["ci_low"] > 0.5,
                  "oracle win rate (ties half) with its 95% bootstrap interval above 0.5", wr)


def gao_fits(d):
    nums, ok = {}, []
    bon = d["bon"]
    for method in sorted({r["method"] for r in bon}):
        rows = [r for r in bon if r["method"] == method]
        try:
            nums[f"bon/{method}"] = gao_fit([r["kl_bon"] for r in rows],
                                            [r["gold_gain"] for r in rows], "bon")
            ok.append(nums[f"bon/{method}"]["r2"] >= R2_MIN)
        except ValueError:
            pass
    for method, rows in d["train"].items():
        if not rows:
            continue
        base = {}
        for r in rows:  # gain over the run's first logged control reward
            base.setdefault((r["run_alpha"], r["seed"]), r["control_reward"])
        gains = [r["control_reward"] - base[(r["run_alpha"], r["seed"])] for r in rows]
        try:
            nums[f"rl/{method}"] = gao_fit([r["kl"] for r in rows], gains, "rl")
            ok.append(nums[f"rl/{method}"]["r2"] >= R2_MIN)
        except ValueError:
            pass
    if not nums:
        return _claim("gao_fit", "", None, "inputs missing", {})
    return _claim("gao_fit", "Gold reward against d = √KL follows Gao et al.'s forms",
                  sum(ok) > len(ok) / 2, f"R² ≥ {R2_MIN} for most fitted curves", nums)


def warm_vs_wco_uwo(d):
    bon = d["bon"]
    if not bon:
        return _claim("warm_vs_wco_uwo", "", None, "inputs missing", {})
    n_max = max(r["n"] for r in bon)
    gold = {r["method"]: r["gold_gain"] for r in bon if r["n"] == n_max}
    if not {"warm_M6", "wco", "uwo"} <= set(gold):
        return _claim("warm_vs_wco_uwo", "", None, "WCO/UWO not run", gold)
    return _claim("warm_vs_wco_uwo", "WARM M=6 does at least as well as the WCO and UWO "
                  "ensembles (Coste et al.), at 1/M of their inference cost",
                  gold["warm_M6"] >= max(gold["wco"], gold["uwo"]),
                  f"best-of-{n_max} control-reward gain of warm_M6 ≥ wco and uwo", gold)


CLAIMS = (lmc_above_diag, wa_approx_ens_id, wa_memorises_less, wa_ood_at_least_ens, bon_ordering,
          rl_single_hacking, larger_m_delays_collapse, pareto, win_rate_warm_vs_single, gao_fits,
          warm_vs_wco_uwo)


def compute_claims(workdir: str) -> list[dict]:
    d = load(workdir)
    return [c(d) for c in CLAIMS]
