"""What the figures draw, checked against the claims they illustrate: the band and mean a panel
draws are the numbers the claim's record reports (on synthetic runs with known answers)."""
import numpy as np
import pytest

from warm_jax.eval import claims as C
from warm_jax.eval.evidence import decide, seed_t_interval
from warm_jax.eval.figures import kl_band, mean_band, wa_minus_ens_by_split


def _drawn(monkeypatch, draw, *args) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (x, y) of every line `draw(*args)` plots (matplotlib's Axes.plot, recorded)."""
    from matplotlib.axes import Axes
    lines, plot = [], Axes.plot

    def record(ax, *a, **kw):
        xs = [np.asarray(v, np.float64) for v in a if not isinstance(v, str)]
        lines.append((xs[0].ravel(), xs[1].ravel()))
        return plot(ax, *a, **kw)
    monkeypatch.setattr(Axes, "plot", record)
    assert draw(*args)
    return lines


def _has_line(lines, x, y) -> bool:
    return any(a.shape == np.shape(x) and np.allclose(a, x) and np.allclose(b, y, equal_nan=True)
               for a, b in lines)


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


def test_lmc_figure_lower_panel_averages_to_the_claims_per_seed_units(monkeypatch, tmp_path):
    """fig_lmc's lower panel draws, per member pair and λ, WA − diagonal accuracy on the OOD
    split; lmc_above_diag decides on each pair's correctness of WA − diagonal averaged over the
    interior λ and the diversity pairs (not `same_run`). Accuracy is the mean of correctness, so
    the drawn curves, averaged over interior λ and the diversity pairs, are each seed's mean of the
    claim's OOD units; with the validation curves, they pool to the claim's per-seed effect."""
    from warm_jax.average.analysis import lmc
    from warm_jax.eval.figures import fig_lmc, lmc_curves
    rng = np.random.default_rng(3)
    n = {"validation": 60, "ood": 40}
    X = {sp: (rng.normal(size=(k, 4)), rng.normal(size=(k, 4))) for sp, k in n.items()}
    subsets = {sp: (sp, None) for sp in n}

    def score_fn(w):
        return {sp: (np.tanh(c @ w) ** 3, np.tanh(r @ w) ** 3) for sp, (c, r) in X.items()}

    by_seed = {}
    for s in range(3):
        base = rng.normal(size=4)
        rows = []
        for pair, spread in (("same_run", 0.1), ("lr", 1.0), ("data_order", 2.0)):
            a, b = base + spread * rng.normal(size=4), base + spread * rng.normal(size=4)
            rows += lmc(a, b, score_fn(a), score_fn(b), score_fn, subsets, pair, n_lambdas=6)
        by_seed[s] = rows
    curves = lmc_curves(by_seed)   # the OOD split
    assert list(curves) == ["same_run", "lr", "data_order"]
    lines = _drawn(monkeypatch, fig_lmc, by_seed, str(tmp_path / "lmc"))
    for lam, acc in curves.values():   # the figure draws these curves' means over seeds
        assert _has_line(lines, lam, acc["wa"].mean(0))
        assert _has_line(lines, lam, (acc["wa"] - acc["diag"]).mean(0))
    # the validation curves: the same drawing with the validation rows relabelled as the OOD split
    val = lmc_curves({s: [dict(r, split="ood" if r["split"] == "validation" else "x")
                          for r in rows if r["analysis"] == "lmc"] for s, rows in by_seed.items()})
    d = {"analysis": {"clean": by_seed, "corrupt": {}}, "bon": [], "train": {}, "eval": {},
         "final": {}}
    rec = decide(C.REGISTRY["lmc_above_diag"], C.REGISTRY["lmc_above_diag"].compute(d), n_boot=200)
    for s in range(3):
        drawn = {}
        for split, cv in (("ood", curves), ("validation", val)):
            lam = cv["lr"][0]
            interior = (lam > 0) & (lam < 1)
            drawn[split] = np.mean([(acc["wa"] - acc["diag"])[s, interior].mean()
                                    for p, (_, acc) in cv.items() if p != "same_run"])
            claimed = np.mean([r["values"] for r in by_seed[s] if r["analysis"] == "lmc_units"
                               and r["split"] == split and r["what"] == "wa_minus_diag"
                               and r["pair"] != "same_run"], 0)
            assert drawn[split] == pytest.approx(claimed.mean(), abs=1e-4)   # rows: 4 decimals
        pooled = (n["validation"] * drawn["validation"] + n["ood"] * drawn["ood"]) / sum(n.values())
        assert pooled == pytest.approx(rec["per_seed"][s], abs=1e-4)


def test_m10_figure_curves_peak_where_m10_same_peak_judges():
    """fig_m draws each method's held-out control reward against step (mean over seeds of
    `step_curves`). m10_same_peak takes each run's peak RL step on half the prompts and judges it
    on the other half. Each prompt here scores the curve plus its own offset, constant over steps
    and summing to zero within each half: both halves peak where the drawn curve does and average
    to it there, so the claim's per-seed effect is the gap between the seed's curves' peaks."""
    from warm_jax.eval.figures import _runs, step_curves
    rng = np.random.default_rng(4)
    steps = np.arange(0, 250, 25)
    d = {"analysis": {"clean": {}, "corrupt": {}}, "bon": [], "train": {}, "final": {},
         "eval": {"warm_M6": [], "warm_M10": []}}
    for s in range(4):
        for m, top in (("warm_M6", 1.0), ("warm_M10", 1.0 + 0.02 * rng.normal())):
            curve = top * np.sin(steps / 250 * np.pi) + 0.05 * rng.normal(size=len(steps))
            curve[0] = 0.0
            offset = rng.normal(size=(2, 4))
            offset = (offset - offset.mean(1, keepdims=True)).ravel()   # zero-mean per half
            for st, g in zip(steps, curve):
                d["eval"][m].append({"step": int(st), "method": m, "run_alpha": 0.01, "seed": s,
                                     "kl": float(st) / 50, "control_reward": float(g),
                                     "gold_per_prompt": [float(g + o) for o in offset]})
    claim = C.REGISTRY["m10_same_peak"]
    rec = decide(claim, claim.compute(d), n_boot=200)
    assert (rec["extra"]["a"], rec["extra"]["b"]) == ("warm_M10", "warm_M6")
    drawn = {m: step_curves(_runs(d["eval"], m, 0.01), "control_reward") for m in d["eval"]}
    x = drawn["warm_M6"][0]
    peaks = {m: v[:, x > 0].max(1) for m, (_, v) in drawn.items()}
    assert peaks["warm_M10"] - peaks["warm_M6"] == pytest.approx(rec["per_seed"], abs=1e-9)
    mean, _, _ = mean_band(drawn["warm_M10"][1])
    assert mean == pytest.approx([np.mean([r["control_reward"] for r in d["eval"]["warm_M10"]
                                           if r["step"] == st]) for st in x])


def test_warp_figure_lerp_and_liti_points_differ_by_the_slerp_claims_effects(monkeypatch,
                                                                             tmp_path):
    """fig_warp marks LERP and the LITI front of each iteration at the mean over seeds of their
    KL and control reward (`warp_curves`). warp_lerp_lower_kl is the per-seed LERP − SLERP (η = 1)
    KL and warp_slerp_beats_lerp the per-prompt SLERP − LERP control reward, iteration 1: means
    are linear, so the drawn points' differences are the claims' effects."""
    from warm_jax.eval.warp_report import fig_warp, warp_curves
    rng = np.random.default_rng(5)
    rows = []
    for s in range(4):
        for pol in range(2):
            for st in (0, 10, 20):
                g = rng.normal(0.1 * st / 10, 0.2, size=8)
                rows.append({"method": "warm_M6", "iteration": 1, "seed": s, "point": "along",
                             "policy": pol, "step": st, "run_alpha": 0.01, "kl": st / 10 + 0.1 * pol,
                             "control_reward": float(g.mean()), "gold_per_prompt": list(g)})
        for kind, eta in (("slerp", 0.0), ("slerp", 0.5), ("slerp", 1.0), ("lerp", 1.0)):
            g = rng.normal(0.3 * eta + 0.1 * (kind == "slerp"), 0.2, size=8)
            rows.append({"method": "warm_M6", "iteration": 1, "seed": s, "point": kind, "eta": eta,
                         "next_eta": 0.5, "kl": float(eta * (1.5 if kind == "slerp" else 1.0)
                                                      + 0.1 * rng.normal()),
                         "control_reward": float(g.mean()), "gold_per_prompt": list(g)})
    d = {"analysis": {"clean": {}, "corrupt": {}}, "bon": [], "train": {}, "final": {},
         "eval": {}, "warp": {"warm_M6": rows}}
    cv = warp_curves(d)["warm_M6"]
    kl, cr, etas = cv["liti"][1]
    assert list(etas) == [0.0, 0.5, 1.0]
    lerp_kl, lerp_cr = cv["lerp"][1]
    lines = _drawn(monkeypatch, fig_warp, d, str(tmp_path / "warp"))
    assert _has_line(lines, kl, cr) and _has_line(lines, [lerp_kl], [lerp_cr])
    recs = {cid: decide(C.REGISTRY[cid], C.REGISTRY[cid].compute(d), n_boot=200)
            for cid in ("warp_lerp_lower_kl", "warp_slerp_beats_lerp")}
    assert lerp_kl - kl[-1] == pytest.approx(recs["warp_lerp_lower_kl"]["effect"])
    assert cr[-1] - lerp_cr == pytest.approx(recs["warp_slerp_beats_lerp"]["effect"])
    assert recs["warp_lerp_lower_kl"]["outcome"] == "reproduced"   # LERP's KL is η, SLERP's 1.5 η
