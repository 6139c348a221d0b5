"""What the figures draw, checked against the claims they illustrate: the band and mean a panel
draws are the numbers the claim's record reports (on synthetic runs with known answers)."""
import numpy as np
import pytest

from warm_jax.eval import claims as C
from warm_jax.eval.evidence import decide, seed_t_interval
from warm_jax.eval.figures import kl_band, mean_band, wa_minus_ens_by_split


def _runs(kls, golds):
    return {s: [{"step": 25 * i, "kl": k, "control_reward": g} for i, (k, g) in
                enumerate(zip(kl, gold))] for s, (kl, gold) in enumerate(zip(kls, golds))}


def test_kl_band_uses_the_seeds_that_reach_each_kl():
    # three seeds reach KL 4, 4 and 8; gold rises linearly along KL with slopes 1, 2 and -1
    runs = _runs([[0, 2, 4], [0, 2, 4], [0, 4, 8]], [[0, 2, 4], [0, 4, 8], [0, -4, -8]])
    grid = np.array([0.0, 2.0, 4.0, 6.0, 8.0, 9.0])
    mean, lo, hi, n = kl_band(runs, "control_reward", grid)
    assert n.tolist() == [3, 3, 3, 1, 1, 0]
    # at KL 2: values 2, 4, -2; at 4: 4, 8, -4
    assert mean[:3] == pytest.approx([0.0, 4 / 3, 8 / 3])
    assert (lo[2], hi[2]) == pytest.approx(seed_t_interval([4.0, 8.0, -4.0]))
    assert np.isnan(mean[3:]).all() and np.isnan(lo[3:]).all()   # one seed: no mean drawn


def _eval_rows(method, seed, kl, gold_PxE):
    return [{"step": 25 * e, "method": method, "run_alpha": 0.001, "seed": seed, "kl": k,
             "control_reward": float(np.mean(gold_PxE[:, e])),
             "gold_per_prompt": [float(g) for g in gold_PxE[:, e]]} for e, k in enumerate(kl)]


def test_hacking_figure_against_kl_is_the_front_claims_gap():
    """rl_front_at_kl's effect is the mean over its KL budgets of WARM − single; the hacking
    figure's KL panels draw each method's mean over seeds at each KL: at the claim's budgets their
    difference, averaged over the budgets, is the claim's effect."""
    rng = np.random.default_rng(0)
    d = {"analysis": {"clean": {}, "corrupt": {}}, "bon": [], "train": {}, "final": {},
         "eval": {"single": [], "warm_M6": []}}
    for s in range(4):
        for m, top in (("single", 3.0 + s), ("warm_M6", 2.5 + s)):
            kl = np.linspace(0, top, 7)
            gold = rng.normal(1.0 - 0.2 * kl * (m == "single"), 0.3, size=(8, 7))
            d["eval"][m] += _eval_rows(m, s, kl, gold)
    claim = C.REGISTRY["rl_front_at_kl"]
    rec = decide(claim, claim.compute(d), n_boot=200)
    budgets = [float(b) for b in rec["extra"]["budgets"]["0.001"]]
    assert budgets   # the claim judged some budgets, and so can the figure
    by = {m: {s: [r for r in d["eval"][m] if r["seed"] == s] for s in range(4)} for m in d["eval"]}
    w, *_ = kl_band(by["warm_M6"], "control_reward", np.asarray(budgets))
    g, *_ = kl_band(by["single"], "control_reward", np.asarray(budgets))
    assert np.mean(w - g) == pytest.approx(rec["effect"])
    assert rec["outcome"] == "reproduced"   # single loses 0.2 gold per unit KL, WARM nothing


def test_corruption_panel_draws_the_claims_per_seed_values_and_t_interval():
    rng = np.random.default_rng(1)
    clean = {s: [{"analysis": "units", "split": sp, "what": "wa_minus_ens",
                  "values": list(rng.normal(0.01 * (sp == "test"), 0.2, 150))}
                 for sp in ("validation", "test")] for s in range(5)}
    d = {"analysis": {"clean": clean, "corrupt": {}}, "bon": [], "train": {}, "eval": {},
         "final": {}}
    drawn = wa_minus_ens_by_split(clean)
    for cid, split in (("wa_approx_ens_id", "validation"), ("wa_beats_ens_ood", "test")):
        claim = C.REGISTRY[cid]
        rec = decide(claim, claim.compute(d), n_boot=200)
        assert drawn[split] == pytest.approx(rec["per_seed"])
        mean, lo, hi = mean_band(drawn[split][:, None])
        assert mean[0] == pytest.approx(rec["effect"])
        assert [lo[0], hi[0]] == pytest.approx(rec["ci_t"])


def test_bon_figure_curves_integrate_to_the_claims_per_prompt_areas():
    """fig_bon draws, per method and seed, the mean best-of-n gain against n; bon_warm_beats_single
    decides on each prompt's area under that gain over log2 n. The area is linear in the prompts,
    so the drawn curve's area is the seed's mean of the claim's units, and WARM − single of the
    drawn areas is the claim's per-seed effect."""
    from warm_jax.eval.evidence import auc_log2
    from warm_jax.eval.figures import bon_curves
    from warm_jax.rl.bon import BON_NS, bon_rows
    rng = np.random.default_rng(2)
    N, ns = 16, [n for n in BON_NS if n <= 16]
    rows = []
    for s in range(3):
        gold = rng.normal(size=(20, N))
        for m, noise in (("single", 1.5), ("warm_M2", 0.5)):   # WARM's proxy tracks gold better
            rows += bon_rows(s, m, gold + noise * rng.normal(size=gold.shape), gold, ns)
    d = {"analysis": {"clean": {}, "corrupt": {}}, "bon": rows, "train": {}, "eval": {},
         "final": {}}
    curves = bon_curves(rows)
    units = C.REGISTRY["bon_warm_beats_single"].compute(d)
    rec = decide(C.REGISTRY["bon_warm_beats_single"], units, n_boot=200)
    for s in range(3):
        drawn = {m: auc_log2(ns, curves[m][s][1]) for m in ("single", "warm_M2")}
        claimed = {m: np.mean(next(r["values"] for r in rows if r.get("analysis") == "auc"
                                   and r["method"] == m and r["seed"] == s))
                   for m in drawn}
        assert drawn == pytest.approx(claimed, abs=1e-5)   # the rows round to 5 decimals
        assert drawn["warm_M2"] - drawn["single"] == pytest.approx(rec["per_seed"][s], abs=1e-5)
    assert rec["outcome"] == "reproduced"
