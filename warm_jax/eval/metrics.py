"""Evaluation of policies: win rates with bootstrap intervals, KL–reward Pareto fronts, checkpoint
selection by proxy vs by truth, and Gao et al. (2022) overoptimisation fits against d = √KL."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def win_rate(gold_a: np.ndarray, gold_b: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
             level: float = 0.95) -> dict:
    """P(A beats B) on the same prompts, judged by the oracle (ties count half), with a bootstrap
    confidence interval over prompts."""
    gold_a, gold_b = np.asarray(gold_a, np.float64), np.asarray(gold_b, np.float64)
    if gold_a.shape != gold_b.shape:
        raise ValueError(f"win_rate: {gold_a.shape} vs {gold_b.shape} — compare on the same prompts")
    score = (gold_a > gold_b) + 0.5 * (gold_a == gold_b)
    rng = np.random.default_rng(seed)
    boots = score[rng.integers(0, len(score), (n_boot, len(score)))].mean(1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"win_rate": float(score.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "n": int(len(score))}


def winrate_matrix(final):
    """(policy names, {(a, b): win_rate of a against b}) over the final rows of each policy
    {name: rows}, every (α, seed) both ran pooled, paired by prompt."""
    golds = {}
    for m, rows in final.items():
        for r in rows:
            if "gold_per_prompt" in r:
                golds.setdefault(m, {})[(r["run_alpha"], r["seed"])] = r["gold_per_prompt"]
    names = sorted(golds)
    mat = {}
    for a in names:
        for b in names:
            keys = sorted(set(golds[a]) & set(golds[b]))
            if keys:
                ga = np.concatenate([golds[a][k] for k in keys])
                gb = np.concatenate([golds[b][k] for k in keys])
                mat[(a, b)] = win_rate(ga, gb)
    return names, mat


def pareto_front(kl: Sequence[float], reward: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower KL, higher reward), by KL."""
    kl, reward = np.asarray(kl, float), np.asarray(reward, float)
    order = np.lexsort((-reward, kl))
    front, best = [], -np.inf
    for i in order:
        if reward[i] > best:
            front.append(int(i))
            best = reward[i]
    return front


def checkpoint_selection(steps, proxy, control) -> dict:
    """What a user who picks the step of highest proxy reward gets, vs the truly best step."""
    proxy, control = np.asarray(proxy, float), np.asarray(control, float)
    i_proxy, i_true = int(np.argmax(proxy)), int(np.argmax(control))
    return {"step_by_proxy": int(steps[i_proxy]), "control_at_proxy_pick": float(control[i_proxy]),
            "step_best": int(steps[i_true]), "control_best": float(control[i_true]),
            "regret": float(control[i_true] - control[i_proxy])}


def _lstsq(features: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    coef, *_ = np.linalg.lstsq(features, y, rcond=None)
    pred = features @ coef
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return coef, (1.0 - ss_res / ss_tot) if ss_tot > 0 else float("nan")


def gao_fit(kl: Sequence[float], gain: Sequence[float], form: str) -> dict:
    """Fit gold-reward gain R against d = √KL: best-of-N `R = d(α − βd)`, RL `R = d(α − β log d)`.
    Both are linear in (α, β), so least squares is exact. Points with KL ≤ 0 are dropped (counted)."""
    kl, gain = np.asarray(kl, float), np.asarray(gain, float)
    keep = kl > 1e-9
    d, y = np.sqrt(kl[keep]), gain[keep]
    if len(d) < 3:
        raise ValueError(f"gao_fit needs >= 3 points with KL > 0, got {len(d)}")
    if form == "bon":
        X = np.stack([d, -d * d], 1)
    elif form == "rl":
        X = np.stack([d, -d * np.log(d)], 1)
    else:
        raise ValueError(f"gao_fit form={form!r}: allowed ('bon', 'rl')")
    (alpha, beta), r2 = _lstsq(X, y)
    return {"form": form, "alpha": float(alpha), "beta": float(beta), "r2": r2,
            "points": int(len(d)), "dropped": int((~keep).sum())}


def gao_curve(fit: dict, d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, float)
    if fit["form"] == "bon":
        return d * (fit["alpha"] - fit["beta"] * d)
    return d * (fit["alpha"] - fit["beta"] * np.log(np.maximum(d, 1e-9)))
