"""The RM-side analyses of WARM, written as JSONL rows that the report turns into figures:

* lmc         — accuracy of (1−λ)φ_a + λφ_b, of the ENS of the two weighted (1−λ, λ), and the
                straight "diag" line, for 11 λ and pairs of increasing diversity (Fig. 3);
* corruption  — per split, every member, WA and ENS of all members, per evaluation pair WA − ENS
                correctness, WA's correctness and the members' disagreement (`units` rows), and
                per pair of members the WA − ENS accuracy difference (Fig. 4–5);
* acc_vs_m    — WA and ENS of the best-M members (ranked on a held-out split) and of random orders.

Member rewards are computed once per split; an ensemble's accuracy is then free, a weight
average needs one forward pass per average.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Scores = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (r_chosen_N, r_rejected_N)


def mix(params: Sequence[Any], weights: Sequence[float]) -> Any:
    """Σ w_i φ_i in memory (float32 accumulation)."""
    w = [float(x) for x in weights]
    return jax.tree.map(lambda *xs: sum(wi * x.astype(jnp.float32) for wi, x in zip(w, xs))
                        .astype(xs[0].dtype), *params)


def accuracy(rc: np.ndarray, rr: np.ndarray, mask: np.ndarray | None = None) -> float:
    correct = np.asarray(rc) > np.asarray(rr)
    return float(correct[mask].mean() if mask is not None else correct.mean())


def split_masks(splits: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, tuple[str, Any]]:
    """Named evaluation subsets: each split, plus train_corrupt / train_clean when labels flipped."""
    out = {}
    for name, data in splits.items():
        out[name] = (name, None)
        flipped = data.get("flipped")
        if name == "train" and flipped is not None and np.any(flipped):
            out["train_corrupt"] = (name, np.asarray(flipped))
            out["train_clean"] = (name, ~np.asarray(flipped))
    return out


def accuracies(scores: Scores, subsets: Mapping[str, tuple[str, Any]]) -> dict[str, float]:
    return {k: accuracy(*scores[split], mask) for k, (split, mask) in subsets.items()}


def ensemble_scores(member_scores: Sequence[Scores], weights: Sequence[float]) -> Scores:
    w = np.asarray(weights, np.float64)[:, None]
    return {s: (np.sum(w * np.stack([m[s][0] for m in member_scores]), 0),
                np.sum(w * np.stack([m[s][1] for m in member_scores]), 0))
            for s in member_scores[0]}


def correct(scores: Scores, subsets: Mapping[str, tuple[str, Any]]) -> dict[str, np.ndarray]:
    """Per evaluation pair: 1.0 where the reward ranks the labelled-chosen response higher."""
    out = {}
    for k, (split, mask) in subsets.items():
        c = (np.asarray(scores[split][0]) > np.asarray(scores[split][1])).astype(np.float64)
        out[k] = c[mask] if mask is not None else c
    return out


def units_row(analysis: str, split: str, values: np.ndarray, **extra) -> dict:
    """One claim's paired unit-level differences (one per evaluation pair) as a JSONL row."""
    return {"analysis": analysis, "split": split, **extra,
            "values": [round(float(v), 4) for v in np.asarray(values)]}


def lmc(params_a, params_b, scores_a: Scores, scores_b: Scores, score_fn: Callable[[Any], Scores],
        subsets, pair: str, n_lambdas: int = 11) -> list[dict]:
    """Accuracy rows along λ, and per evaluation pair the mean over interior λ of WA − diag and of
    WA − ENS (the `lmc_units` rows a claim is decided on). λ = 0 and 1 are the members."""
    acc_a, acc_b = accuracies(scores_a, subsets), accuracies(scores_b, subsets)
    c_a, c_b = correct(scores_a, subsets), correct(scores_b, subsets)
    rows, minus_diag, minus_ens = [], [], []
    for lam in np.linspace(0.0, 1.0, n_lambdas):
        wa_scores = scores_a if lam == 0 else scores_b if lam == 1 else \
            score_fn(mix([params_a, params_b], [1 - lam, lam]))
        ens_scores = ensemble_scores([scores_a, scores_b], [1 - lam, lam])
        wa, ens = accuracies(wa_scores, subsets), accuracies(ens_scores, subsets)
        if 0 < lam < 1:
            c_wa, c_ens = correct(wa_scores, subsets), correct(ens_scores, subsets)
            minus_diag.append({k: c_wa[k] - ((1 - lam) * c_a[k] + lam * c_b[k]) for k in subsets})
            minus_ens.append({k: c_wa[k] - c_ens[k] for k in subsets})
        for k in subsets:
            rows.append({"analysis": "lmc", "pair": pair, "lambda": round(float(lam), 3),
                         "split": k, "wa": wa[k], "ens": ens[k],
                         "diag": (1 - lam) * acc_a[k] + lam * acc_b[k]})
    for k in subsets:
        if minus_diag:
            rows.append(units_row("lmc_units", k, np.mean([d[k] for d in minus_diag], 0),
                                  pair=pair, what="wa_minus_diag"))
            rows.append(units_row("lmc_units", k, np.mean([d[k] for d in minus_ens], 0),
                                  pair=pair, what="wa_minus_ens"))
    return rows


def corruption(params: Sequence[Any], scores: Sequence[Scores], score_fn, subsets, *,
               pairs: bool = True) -> list[dict]:
    """Every member's, WA's and ENS's accuracy per subset; per evaluation pair WA − ENS
    correctness at M (`units` rows); with `pairs`, WA vs ENS for every pair of members too."""
    M = len(params)
    rows = []
    for i in range(M):
        for k, v in accuracies(scores[i], subsets).items():
            rows.append({"analysis": "corruption", "model": f"member_{i}", "split": k, "acc": v})
    uniform = [1.0 / M] * M
    wa_scores, ens_scores = score_fn(mix(params, uniform)), ensemble_scores(scores, uniform)
    for label, acc in (("wa", accuracies(wa_scores, subsets)),
                       ("ens", accuracies(ens_scores, subsets))):
        for k, v in acc.items():
            rows.append({"analysis": "corruption", "model": f"{label}_M{M}", "split": k, "acc": v})
    c_wa, c_ens = correct(wa_scores, subsets), correct(ens_scores, subsets)
    rows += [units_row("units", k, c_wa[k] - c_ens[k], what="wa_minus_ens", m=M) for k in subsets]
    rows += [units_row("units", k, c_wa[k], what="wa_correct", m=M) for k in subsets]
    c_members = [correct(s, subsets) for s in scores]
    rows += [units_row("units", k, disagreement([c[k] for c in c_members]), what="disagreement",
                       m=M) for k in subsets]
    for i, j in (itertools.combinations(range(M), 2) if pairs else ()):
        wa = accuracies(score_fn(mix([params[i], params[j]], [0.5, 0.5])), subsets)
        ens = accuracies(ensemble_scores([scores[i], scores[j]], [0.5, 0.5]), subsets)
        for k in subsets:
            rows.append({"analysis": "corruption_pair", "pair": [i, j], "split": k, "wa": wa[k],
                         "ens": ens[k], "wa_minus_ens": wa[k] - ens[k]})
    return rows


def disagreement(correct_members: Sequence[np.ndarray]) -> np.ndarray:
    """Per evaluation pair, the share of member pairs that rank it differently (diversity)."""
    c = np.stack([np.asarray(x) for x in correct_members])
    M = len(c)
    if M < 2:
        return np.zeros(c.shape[1])
    n_right = c.sum(0)
    return n_right * (M - n_right) / (M * (M - 1) / 2)


def rank(scores: Sequence[Scores], subsets, by: str) -> list[int]:
    """Members best-first by accuracy on subset `by` (ties: lower index first)."""
    accs = [accuracies(s, {by: subsets[by]})[by] for s in scores]
    return sorted(range(len(scores)), key=lambda i: (-accs[i], i))


def acc_vs_m(params: Sequence[Any], scores: Sequence[Scores], score_fn, subsets, *, rank_by: str,
             random_orders: int = 3, seed: int = 0) -> list[dict]:
    M = len(params)
    orders = [("ranked", rank(scores, subsets, rank_by))]
    rng = np.random.default_rng(seed)
    orders += [(f"random_{r}", rng.permutation(M).tolist()) for r in range(random_orders)]
    rows = []
    for order_name, order in orders:
        for m in range(1, M + 1):
            idx = order[:m]
            w = [1.0 / m] * m
            wa = accuracies(score_fn(mix([params[i] for i in idx], w)), subsets)
            ens = accuracies(ensemble_scores([scores[i] for i in idx], w), subsets)
            for k in subsets:
                rows.append({"analysis": "acc_vs_m", "order": order_name, "m": m, "members": idx,
                             "split": k, "wa": wa[k], "ens": ens[k]})
    return rows
