import itertools
import json
import math

import numpy as np
import pytest

from warm_jax.eval.evidence import (REGISTRY, UNION_MAX_SEEDS, Claim, Units, auc_log2,
                                    bon_unbiased, decide, evaluate, hierarchical_bootstrap,
                                    register, seed_t_interval, t_quantile, value_at_kl)

FIELDS = dict(finding="WA fits corrupted labels less than ENS", paper_ref="Fig. 4-5",
              statistic="mean over pairs of (WA correct - ENS correct)", unit="pair",
              figure="corruption")


def _claim(kind="directional", **kw):
    defaults = {"directional": {"direction": 1}, "equivalence": {"delta": 0.2}, "descriptive": {}}
    return Claim(id=f"test_{kind}", kind=kind, compute=lambda data: None,
                 **{**FIELDS, **defaults[kind], **kw})


# ---------------------------------------------------------------------------------------------
# Calibration: outcomes at the right rates on synthetic data whose truth is known.

def _nested_pairs(rng, n_trials, mu, *, S=3, U=2000, tau=0.04, q=0.6):
    """Per trial and seed, a training effect θ = mu + N(0, τ²) (the seed's random effect); each of
    U pairs gives a WA − ENS correctness difference in {-1, 0, +1} with P(±1) = (q ± θ)/2, so its
    mean is θ. Seed-mean evaluation noise ≈ √q/√U ≈ 0.017 < τ: the seed spread dominates, as in
    docs/evidence.md. Returns diffs_TxSxU."""
    theta_TxS = mu + tau * rng.standard_normal((n_trials, S))
    u_TxSxU = rng.random((n_trials, S, U))
    plus_TxS, minus_TxS = np.clip((q + theta_TxS) / 2, 0, 1), np.clip((q - theta_TxS) / 2, 0, 1)
    return (u_TxSxU < plus_TxS[..., None]).astype(float) - (u_TxSxU > 1 - minus_TxS[..., None])


def _rates(claim, diffs_TxSxU, n_boot=500):
    """Outcome rates of the decision rule (the union at S = 3) and of the bootstrap interval alone.
    n_boot = 500 keeps the file fast: at 2,000 the union rates below were identical and the
    bootstrap-alone rates moved by <= 0.007 (measured once)."""
    union, boot = [], []
    for i, diffs_SxU in enumerate(diffs_TxSxU):
        record = decide(claim, Units(list(diffs_SxU)), rng_seed=i, n_boot=n_boot)
        assert record["interval"] == "union(hierarchical_bootstrap, seed_t)"
        union.append(record["outcome"])
        lo, hi = record["ci_bootstrap"]
        boot.append(_outcome_of(claim, lo, hi))
    count = lambda xs, o: float(np.mean([x == o for x in xs]))  # noqa: E731
    return ({o: count(union, o) for o in ("reproduced", "contradicted")},
            {o: count(boot, o) for o in ("reproduced", "contradicted")})


def _outcome_of(claim, lo, hi):
    if claim.kind == "directional":
        return "reproduced" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"
    d = claim.delta
    return ("reproduced" if -d < lo and hi < d else
            "contradicted" if lo >= d or hi <= -d else "inconclusive")


# Measured with this file's generators and seeds (1,000 trials each, S = 3 seeds x 2,000 pairs,
# τ = 0.04):                    union rule            bootstrap alone
#   null θ = 0, sign +1         reproduced 0.026      reproduced 0.078
#   effect θ = +0.2             reproduced 0.960      reproduced 1.000
#   reversed θ = -0.2           contradicted 0.955    contradicted 1.000
#   equivalence δ=0.2, θ = 0    reproduced 0.927      reproduced 1.000
#   equivalence θ = δ (edge)    reproduced 0.028      reproduced 0.080
#   equivalence θ = 0.45        contradicted 0.997    contradicted 1.000
# The bootstrap alone calls a null 'reproduced' 3x too often (0.078 vs the nominal 0.025; 0.14
# when seed noise is everything, see the seed-level test): that is why S <= 30 decides on the union.
def test_directional_calibration_at_three_seeds():
    rng = np.random.default_rng(1)
    claim = _claim("directional")
    union, boot = _rates(claim, _nested_pairs(rng, 1000, 0.0))
    assert union["reproduced"] <= 0.05 and union["contradicted"] <= 0.05, union
    assert boot["reproduced"] > 0.05, f"bootstrap alone looks calibrated now: {boot}; revisit union"
    union, _ = _rates(claim, _nested_pairs(rng, 1000, 0.2))
    assert union["reproduced"] >= 0.9 and union["contradicted"] == 0, union
    union, _ = _rates(claim, _nested_pairs(rng, 1000, -0.2))
    assert union["contradicted"] >= 0.9 and union["reproduced"] == 0, union


def test_equivalence_calibration_at_three_seeds():
    rng = np.random.default_rng(2)
    claim = _claim("equivalence", delta=0.2)
    union, _ = _rates(claim, _nested_pairs(rng, 1000, 0.0))
    assert union["reproduced"] >= 0.9 and union["contradicted"] == 0, union
    union, _ = _rates(claim, _nested_pairs(rng, 1000, 0.2))   # the equivalence null: θ = δ
    assert union["reproduced"] <= 0.05, union
    union, _ = _rates(claim, _nested_pairs(rng, 1000, 0.45))
    assert union["contradicted"] >= 0.9 and union["reproduced"] == 0, union


def test_seed_level_null_calibration():
    # one number per seed: the percentile bootstrap's 2.5% point is the smallest seed (each seed is
    # all three draws with probability 1/27 > 2.5%), so alone it says 'reproduced' whenever all
    # three are > 0: 1/8 of nulls. Measured: bootstrap alone 0.140, union 0.028.
    rng = np.random.default_rng(3)
    claim = _claim("directional", unit="seed")
    values_TxS = rng.standard_normal((1000, 3))
    records = [decide(claim, Units(v), rng_seed=i, n_boot=500) for i, v in enumerate(values_TxS)]
    union = np.mean([r["outcome"] == "reproduced" for r in records])
    boot = np.mean([r["ci_bootstrap"][0] > 0 for r in records])
    assert union <= 0.05 and 0.09 <= boot <= 0.16, (union, boot)


# ---------------------------------------------------------------------------------------------
# The intervals themselves.

def test_t_quantile_against_tables_and_scipy():
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 10: 2.228, 30: 2.042}   # t_0.975 tables
    for df, t in table.items():
        assert t_quantile(0.975, df) == pytest.approx(t, abs=5e-4)
        assert t_quantile(0.025, df) == pytest.approx(-t, abs=5e-4)
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 31):
        for p in (0.6, 0.9, 0.95, 0.975, 0.995, 0.9995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


@pytest.mark.parametrize("discrete", [True, False])
def test_hierarchical_bootstrap_mean_and_variance(discrete):
    # Var(stat) = [Var_J(mean_J) + E_J(var_J / U_J)] / S with plug-in (ddof=0) variances: seeds
    # drawn uniformly, then a resample of the chosen seed. Both resampling paths must give it.
    rng = np.random.default_rng(4)
    sizes = (400, 300, 500, 200) if discrete else (50, 80, 30, 60)
    per_seed = [(rng.integers(-1, 2, u) if discrete else rng.normal(0.3 * s, 1.0, u)).astype(float)
                for s, u in enumerate(sizes)]
    stats_B = hierarchical_bootstrap(per_seed, rng=np.random.default_rng(0), n_boot=20000)
    means_S = np.array([v.mean() for v in per_seed])
    want_var = (means_S.var() + np.mean([v.var() / v.size for v in per_seed])) / len(per_seed)
    assert stats_B.mean() == pytest.approx(means_S.mean(), abs=4 * math.sqrt(want_var / 20000))
    assert stats_B.var() == pytest.approx(want_var, rel=0.05)


def test_decide_seed_level_numbers_by_hand():
    record = decide(_claim("directional", unit="seed"), Units([1.0, 2.0, 3.0], extra={"k": 1}))
    assert record["interval"] == "union(seed_bootstrap, seed_t)"
    half = 4.302653 / math.sqrt(3)   # t_0.975(2 df) · sd 1 / √3; the bootstrap stays inside [1, 3]
    assert record["ci"] == pytest.approx([2 - half, 2 + half], abs=1e-5)
    assert record["ci_t"] == pytest.approx(record["ci"])
    assert 1 <= record["ci_bootstrap"][0] <= record["ci_bootstrap"][1] <= 3
    assert (record["effect"], record["per_seed"], record["n_seeds"], record["n_units"]) == \
        (2.0, [1.0, 2.0, 3.0], 3, 3)
    assert record["outcome"] == "inconclusive" and record["extra"] == {"k": 1}
    assert record["seeds_needed"] == 4   # t(3 df)·1/√4 = 1.59 < 2 <= t(2 df)·1/√3 = 2.48
    json.dumps(record, allow_nan=False)


def test_decide_signs_and_paired_pairs():
    rng = np.random.default_rng(5)
    below = Units([rng.normal(m, 0.5, 1000) for m in (-1.0, -1.1, -0.9)])
    assert decide(_claim(direction=-1), below)["outcome"] == "reproduced"
    assert decide(_claim(direction=1), below)["outcome"] == "contradicted"
    assert "below 0" in decide(_claim(direction=-1), below)["rule"]
    assert decide(_claim("equivalence", delta=0.5), below)["outcome"] == "contradicted"
    descriptive = decide(_claim("descriptive"), below)
    assert descriptive["outcome"] is None and descriptive["ci"][1] < 0


def test_one_seed_ties_and_missing_inputs_are_never_reproduced():
    one = decide(_claim(), Units([np.full(500, 0.3)]))
    assert one["outcome"] == "inconclusive" and "one seed" in one["reason"] and one["ci_t"] is None
    zeros = Units([np.zeros(500)] * 3)
    for direction in (1, -1):
        tie = decide(_claim(direction=direction), zeros)
        assert tie["ci"] == [0.0, 0.0] and tie["outcome"] == "inconclusive"
    assert decide(_claim("equivalence"), zeros)["outcome"] == "reproduced"   # identical: equivalent
    missing = decide(_claim(), None)
    assert missing["outcome"] is None and missing["reason"] == "inputs missing"
    json.dumps(missing, allow_nan=False)


def test_many_seeds_decide_on_the_bootstrap_alone():
    rng = np.random.default_rng(6)
    units = Units([rng.normal(0.1, 1.0, 50) for _ in range(UNION_MAX_SEEDS + 1)])
    record = decide(_claim(), units, n_boot=500)
    assert record["interval"] == "hierarchical_bootstrap" and record["ci"] == record["ci_bootstrap"]
    assert seed_t_interval(record["per_seed"]) == pytest.approx(record["ci_t"])


def test_units_validation():
    with pytest.raises(ValueError, match="NaN"):
        Units([np.array([0.0, np.nan])])
    with pytest.raises(ValueError, match="empty"):
        Units([np.array([1.0]), np.array([])])
    with pytest.raises(ValueError, match="1-D"):
        Units([np.zeros((2, 2))])
    with pytest.raises(ValueError, match="one number per seed"):
        decide(_claim(unit="seed"), Units([np.zeros(3), np.zeros(3)]))


# ---------------------------------------------------------------------------------------------
# Registry.

def test_register_adds_one_entry_and_rejects_duplicates():
    registry = {}
    decl = dict(id="wa_memorises_less", kind="directional", direction=-1, **FIELDS)

    @register(registry=registry, **decl)
    def wa_memorises_less(data):
        return Units([data] * 3) if data is not None else None

    assert registry["wa_memorises_less"].compute is wa_memorises_less
    assert "wa_memorises_less" not in REGISTRY
    with pytest.raises(ValueError, match="already registered"):
        register(registry=registry, **decl)(lambda data: None)
    records = evaluate(-np.ones(100), registry=registry, n_boot=200)
    assert [(r["claim"], r["outcome"], r["ci"]) for r in records] == \
        [("wa_memorises_less", "reproduced", [-1.0, -1.0])]   # no noise at all: a sure effect
    assert evaluate(None, registry=registry)[0]["outcome"] is None


@pytest.mark.parametrize("bad, message", [
    (dict(unit="token"), r"unit='token'; allowed \('pair', 'prompt', 'seed'\)"),
    (dict(kind="vibes"), r"kind='vibes'; allowed"),
    (dict(direction=None), r"direction \+1 or -1"),
    (dict(direction=True), r"direction \+1 or -1"),
    (dict(direction=2), r"direction \+1 or -1"),
    (dict(delta=0.1), r"delta is for equivalence claims only"),
    (dict(kind="equivalence", direction=None, delta=0.0), r"margin delta > 0"),
    (dict(kind="equivalence", direction=None, delta=float("inf")), r"margin delta > 0"),
    (dict(kind="equivalence", direction=1, delta=0.1), r"direction is for directional claims"),
    (dict(kind="equivalence", direction=None, delta=0.1, can_contradict=False),
     r"can_contradict=False is for"),
    (dict(finding=""), r"finding must be a non-empty string"),
    (dict(compute="not a function"), r"compute must be callable"),
])
def test_claim_validation_names_the_field(bad, message):
    fields = dict(id="c", kind="directional", direction=1, compute=lambda data: None, **FIELDS)
    with pytest.raises(ValueError, match=message):
        Claim(**{**fields, **bad})


# ---------------------------------------------------------------------------------------------
# Curve summaries.

def _brute_force_bon(proxy_K, control_K, n):
    """Mean over all n-subsets of the control of the subset's best by proxy; tied best share."""
    values = []
    for subset in itertools.combinations(range(len(proxy_K)), n):
        best = max(proxy_K[list(subset)])
        values.append(np.mean([control_K[i] for i in subset if proxy_K[i] == best]))
    return np.mean(values)


@pytest.mark.parametrize("ties", [False, True])
def test_bon_unbiased_equals_brute_force_enumeration(ties):
    rng = np.random.default_rng(7)
    proxy_PxK, control_PxK = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    if ties:
        proxy_PxK = np.round(proxy_PxK)   # a handful of distinct values per prompt
    control_PxN = bon_unbiased(proxy_PxK, control_PxK, range(1, 7))
    brute_PxN = [[_brute_force_bon(p, c, n) for n in range(1, 7)]
                 for p, c in zip(proxy_PxK, control_PxK)]
    np.testing.assert_allclose(control_PxN, brute_PxN, rtol=0, atol=1e-12)
    np.testing.assert_allclose(control_PxN[:, 0], control_PxK.mean(1), atol=1e-12)
    if not ties:
        best_P = control_PxK[np.arange(5), proxy_PxK.argmax(1)]
        np.testing.assert_allclose(control_PxN[:, -1], best_P, atol=1e-12)


def test_bon_unbiased_at_k_256_does_not_overflow():
    rng = np.random.default_rng(8)
    proxy_PxK = rng.normal(size=(3, 256))
    ns = [1, 2, 4, 16, 64, 128, 256]
    flat_PxN = bon_unbiased(proxy_PxK, np.full((3, 256), 0.7), ns)   # weights sum to one
    np.testing.assert_allclose(flat_PxN, 0.7, atol=1e-10)
    truth_PxN = bon_unbiased(proxy_PxK, proxy_PxK, ns)   # proxy = truth: best-of-n only improves
    assert np.all(np.diff(truth_PxN, axis=1) > 0)
    np.testing.assert_allclose(truth_PxN[:, -1], proxy_PxK.max(1), atol=1e-12)
    pairs_P = [np.mean([max(a, b) for a, b in itertools.combinations(p, 2)]) for p in proxy_PxK]
    np.testing.assert_allclose(truth_PxN[:, 1], pairs_P, atol=1e-12)
    with pytest.raises(ValueError, match=r"integer in \[1, K=256\]"):
        bon_unbiased(proxy_PxK, proxy_PxK, [0, 257])


def test_auc_log2_by_hand():
    assert auc_log2([1, 2, 4], [0.0, 1.0, 1.0]) == pytest.approx(0.75)   # (0.5 + 1) / 2
    assert auc_log2([1, 2, 4], [5.0, 6.0, 6.0]) == pytest.approx(0.75)   # a gain over curve(1)
    np.testing.assert_allclose(auc_log2([1, 2, 4], [[0, 1, 1], [0, 2, 2]]), [0.75, 1.5])
    assert auc_log2([1, 3], [1.0, 3.0]) == pytest.approx(1.0)            # half of a gain of 2
    with pytest.raises(ValueError, match="increase strictly from 1"):
        auc_log2([2, 4], [0.0, 1.0])


def test_value_at_kl_reads_the_first_crossing():
    kl_E = [0.0, 1.0, 0.8, 2.0, 4.0]     # a dip at e = 2: its KL (0.8) was already passed
    value_E = [0.0, 1.0, 5.0, 3.0, 2.0]
    got = value_at_kl(kl_E, value_E, [0.0, 0.5, 1.0, 1.5, 3.0, 4.0, 5.0, -1.0])
    np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 2.0, 2.5, 2.0, np.nan, np.nan])


def test_p_values_agree_with_the_interval_decision():
    """p < 0.05 exactly when the 95% interval gives that outcome, for both kinds and signs."""
    from warm_jax.eval.evidence import decide
    rng = np.random.default_rng(3)
    for trial in range(120):
        eq = trial % 2 == 1
        c = _claim("equivalence", delta=0.05) if eq else _claim(direction=1 if trial % 4 else -1)
        S = int(rng.integers(2, 8))
        mu = rng.normal(0, 0.06)
        u = Units([rng.normal(mu + rng.normal(0, 0.03), 0.3, int(rng.integers(20, 200)))
                   for _ in range(S)])
        r = decide(c, u, n_boot=300)
        assert (r["outcome"] == "reproduced") == (r["p_reproduced"] < 0.05), r
        assert (r["outcome"] == "contradicted") == (r["p_contradicted"] < 0.05), r


def test_holm_keeps_only_what_survives_the_step_down():
    from warm_jax.eval.evidence import holm
    rec = lambda cid, p_rep, p_con, primary=True: {  # noqa: E731
        "claim": cid, "primary": primary, "outcome": "reproduced" if p_rep < .05 else
        "contradicted" if p_con < .05 else "inconclusive", "p_reproduced": p_rep,
        "p_contradicted": p_con, "reason": ""}
    recs = [rec("a", 0.001, 0.9), rec("b", 0.02, 0.9), rec("c", 0.9, 0.012),
            rec("d", 0.04, 0.9), rec("x", 0.01, 0.9, primary=False)]
    out = {r["claim"]: r for r in holm(recs)}
    # sorted p: a .001 (x4 = .004), c .012 (x3 = .036), b .02 (x2 = .04), d .04 (x1, but the
    # running max keeps it at .04): every adjusted p < .05 here
    assert [out[k]["multiplicity"]["p_adjusted"] for k in "acbd"] == pytest.approx(
        [0.004, 0.036, 0.04, 0.04])
    assert out["c"]["outcome"] == "contradicted" and out["d"]["outcome"] == "reproduced"
    assert out["x"] == recs[4]    # exploratory: untouched
    recs[1] = rec("b", 0.03, 0.9)  # now .03 x 2 = .06: b fails, and so does d after it
    out = {r["claim"]: r for r in holm(recs)}
    assert out["b"]["outcome"] == "inconclusive" and out["b"]["outcome_unadjusted"] == "reproduced"
    assert out["d"]["outcome"] == "inconclusive" and out["a"]["outcome"] == "reproduced"
    assert out["b"]["multiplicity"]["family"] == 4


def test_compound_claims_need_every_part():
    from warm_jax.eval.evidence import decide
    c = _claim()
    up, flat = [np.full(50, 0.5) + 0.01 * np.arange(50) % 3] * 3, [np.zeros(50)] * 3
    down = [np.full(50, -0.5) - 0.01 * np.arange(50) % 3] * 3
    both = decide(c, Units(up, parts={"rise": Units(up), "fall": Units(up)}), n_boot=200)
    assert both["outcome"] == "reproduced" and set(both["parts"]) == {"rise", "fall"}
    one = decide(c, Units(up, parts={"rise": Units(up), "fall": Units(flat)}), n_boot=200)
    assert one["outcome"] == "inconclusive" and one["binding_part"] == "fall"
    assert one["per_seed"] == pytest.approx([0.0] * 3)   # the binding part's numbers
    neg = decide(c, Units(up, parts={"rise": Units(up), "fall": Units(down)}), n_boot=200)
    assert neg["outcome"] == "contradicted" and neg["p_contradicted"] < 0.05
    # contradicted is a union over the parts: Bonferroni, p = k x the smallest part's
    part = decide(c, Units(down), n_boot=200)["p_contradicted"]
    assert neg["p_contradicted"] == pytest.approx(min(1.0, 2 * part))


def test_chance_decisions_counts_the_exploratory_claims_with_outcomes():
    from warm_jax.eval.evidence import chance_decisions
    rec = lambda kind, p_con, n=3, outcome="inconclusive", primary=False: {  # noqa: E731
        "primary": primary, "outcome": outcome, "kind": kind, "p_contradicted": p_con,
        "n_seeds": n}
    recs = [rec("directional", 0.5), rec("directional", None, outcome="reproduced"),
            rec("equivalence", 0.9, outcome="reproduced"), rec("directional", None, outcome=None),
            rec("directional", 0.9, n=1), rec("directional", 0.9, primary=True)]
    # directional 5%, one that cannot contradict 2.5%, equivalence 5% (2.5% each way); one seed
    # (never decided), no inputs and primary claims do not count
    assert chance_decisions(recs) == pytest.approx(0.05 + 0.025 + 0.05)


def test_p_values_of_ties_never_decide():
    from warm_jax.eval.evidence import decide
    for S in (3, 35):   # 35 seeds: the bootstrap alone, whose replicates all sit on 0
        zero = decide(_claim(unit="seed"), Units([[0.0]] * S), n_boot=200)
        assert zero["outcome"] == "inconclusive" and zero["p_reproduced"] == 1.0
        assert zero["p_contradicted"] == 1.0
        neg = decide(_claim(unit="seed", direction=-1), Units([[0.0]] * S), n_boot=200)
        assert neg["p_reproduced"] == 1.0 and neg["p_contradicted"] == 1.0


def test_bootstrap_quantile_inverse_at_ties():
    from warm_jax.eval.evidence import _q_at
    b = np.array([-1.0, 0.0, 0.0, 0.0, 2.0])
    assert _q_at(b, 0.0, upper=True) == 0.75 and _q_at(b, 0.0, upper=False) == 0.25
    assert np.quantile(b, 0.75) == 0.0 and np.quantile(b, 0.25) == 0.0
    assert _q_at(b, 1.0, upper=True) == _q_at(b, 1.0, upper=False) == pytest.approx(0.875)
    assert _q_at(b, -2.0, upper=True) == 0.0 and _q_at(b, 3.0, upper=False) == 1.0
    assert _q_at(b, -1.0, upper=False) == 0.0 and _q_at(b, 2.0, upper=True) == 1.0
