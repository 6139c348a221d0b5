"""WARP's claims (`warm_jax.eval.claims_warp`) on hand-built rows: the WARP path, front gaps at KL
budgets, the largest KL before hacking, each claim's statistic against a hand-computed value, and
the 2×2 with missing cells."""
import numpy as np
import pytest

from warm_jax.eval import evidence as E
from warm_jax.eval.claims import REGISTRY
from warm_jax.eval.claims_warp import front_gap, safe_kl, warp_path, warp_runs

P = 8   # held-out prompts
SEEDS = (0, 1, 2)


def _row(kl, cr, **kw):
    return {"kl": kl, "control_reward": cr, "gold_per_prompt": [cr] * P, **kw}


def _warp_rows(method, seed, up=0.0, iterations=1):
    """Two policies per seed climbing to KL 2 along training, LITI points at η 0, 0.5, 1 and LERP;
    `up` lifts every merged point's control reward."""
    rows = []
    for it in range(1, iterations + 1):
        base = 0.25 * (it - 1)
        for m in range(2):
            for step, (kl, cr) in enumerate([(base, 1.0), (base + 1.0, 1.2), (base + 2.0, 1.1)]):
                rows.append(_row(kl, cr + 0.01 * m, method=method, run_alpha=0.001, seed=seed,
                                 step=100 * step, iteration=it, point="along", policy=m))
        for eta, kl, cr in ((0.0, base, 1.0), (0.5, base + 1.0, 1.3), (1.0, base + 2.0, 1.2)):
            rows.append(_row(kl, cr + up + 0.1 * (it - 1), method=method, seed=seed,
                             iteration=it, point="slerp", eta=eta, next_eta=0.5))
        rows.append(_row(base + 1.5, 1.15 + up, method=method, seed=seed, iteration=it,
                         point="lerp", eta=1.0, next_eta=0.5))
    return rows


def _rl_rows(method, seed, cr_at_1=1.2):
    return [_row(kl, cr, method=method, run_alpha=0.001, seed=seed, step=100 * i)
            for i, (kl, cr) in enumerate([(0.0, 1.0), (1.0, cr_at_1), (2.0, 1.0)])]


def _data(methods=("single", "warm_M2"), iterations=1, up=None):
    up = up or {}
    return {"eval": {m: [r for s in SEEDS for r in _rl_rows(m, s)] for m in ("single", "warm_M2")},
            "warp": {m: [r for s in SEEDS for r in _warp_rows(m, s, up.get((m, s), 0.0),
                                                               iterations)] for m in methods}}


def _decide(cid, d):
    return E.decide(REGISTRY[cid], REGISTRY[cid].compute(d))


def test_warp_path_front_gap_and_safe_kl():
    runs = warp_runs({"warp": {"single": _warp_rows("single", 0, iterations=2)}})["single"][0]
    # iteration 1 below next_eta = 0.5 (its point at 0.5 is iteration 2's η = 0), then iteration 2
    assert [(r["iteration"], r["eta"]) for r in warp_path(runs)] == [
        (1, 0.0), (2, 0.0), (2, 0.5), (2, 1.0)]
    a = [_row(0.0, 1.0), _row(1.0, 2.0), _row(2.0, 2.0)]
    b = [_row(0.0, 1.0), _row(2.0, 1.0)]
    short = [_row(0.0, 1.0), _row(0.6, 1.0)]
    gaps, used, at = front_gap({0: [(a, b)], 1: [(a, short)]}, budgets=(0.5, 1.0, 4.0))
    assert used == [0.5]                       # 1.0 is beyond `short`, 4.0 beyond every curve
    assert gaps == {0: pytest.approx(0.5), 1: pytest.approx(0.5)} and at == {"0": [0.5], "1": [0.5]}
    gaps, used, at = front_gap({0: [(a, b)]}, budgets=(0.5, 1.0), over_budgets=np.min)
    assert gaps == {0: pytest.approx(0.5)} and at == {"0": [0.5, 1.0]}
    assert front_gap({0: [(a, short)]}, budgets=(1.0,)) == (None, [], {})
    # running peak 1.5 at KL 1; 1.45 stays within 0.1, 1.3 does not: the largest KL before is 1.5
    assert safe_kl([_row(0.0, 1.0), _row(1.0, 1.5), _row(1.5, 1.45), _row(2.0, 1.3),
                    _row(3.0, 1.6)]) == (1.5, True)
    assert safe_kl([_row(0.0, 1.0), _row(0.8, 1.2)]) == (0.8, False)
    # a point high on the selection half only (noise) is picked as the peak, but judged on the other
    # half it is no higher than what follows: no fall (on full-prompt means it would be one)
    lucky = dict(_row(1.0, 1.5), gold_per_prompt=[2.0] * (P // 2) + [1.0] * (P // 2))
    assert safe_kl([_row(0.0, 1.0), lucky, _row(2.0, 1.0)]) == (2.0, False)


def test_warp_point_claims_hand_values():
    # SLERP (η = 1) 1.2 + up against the policies' last step 1.1 / 1.11 and LERP 1.15 + up
    d = _data(up={("single", 1): 0.1, ("warm_M2", 2): 0.2})
    rec = _decide("warp_slerp_beats_policies", d)
    per_seed = [0.09 + np.mean(u) for u in ([0, 0], [0.1, 0], [0, 0.2])]   # the best policy
    assert rec["per_seed"] == pytest.approx(per_seed) and rec["outcome"] == "reproduced"
    rec = _decide("warp_slerp_beats_lerp", d)
    assert rec["per_seed"] == pytest.approx([0.05] * 3) and rec["outcome"] == "reproduced"
    rec = _decide("warp_lerp_lower_kl", d)           # LERP 1.5 against SLERP 2.0
    assert rec["effect"] == pytest.approx(-0.5) and rec["n_units"] == 3
    # LITI (1.0, 1.3, 1.2 + up at KL 0, 1, 2) against the policies (1.0, 1.2, 1.1; the second
    # 0.01 higher) at KL budgets 0.25, 0.5, 1, 2: gaps 0.025, 0.05, 0.1, 0.1, less 0.005 on average;
    # dominance is the smallest of them
    rec = _decide("warp_liti_front", d)
    assert rec["per_seed"][0] == pytest.approx(0.025 - 0.005)
    assert rec["extra"]["gap_at_budget"]["single"]["0"] == [0.02, 0.045, 0.095, 0.095]
    assert rec["extra"]["budgets"] == {"single": [0.25, 0.5, 1.0, 2.0],
                                       "warm_M2": [0.25, 0.5, 1.0, 2.0]}
    # the EMA policies (1.0, 1.2, 1.1; 1.01, ...) against RL (1.0, 1.2, 1.0): 0.1 at KL 2 only
    rec = _decide("warp_ema_front", d)
    assert rec["per_seed"] == pytest.approx([np.mean([0, 0, 0, 0.1]) + 0.005] * 3)
    assert _decide("warp_iter2_front", d)["outcome"] is None     # one iteration: no input


def test_warp_iterations_and_the_2x2():
    d = _data(iterations=2, up={("warm_M2", s): 0.05 for s in SEEDS})
    # iteration 2: KL shifted by 0.25, control reward +0.1; common budgets 0.25 .. 2
    rec = _decide("warp_iter2_front", d)
    assert rec["extra"]["budgets"]["single"] == [0.25, 0.5, 1.0, 2.0]
    assert all(np.isfinite(rec["per_seed"])) and rec["outcome"] == "reproduced"
    # WARP against WARM lies 0.05 above WARP against the single RM everywhere on its path
    rec = _decide("warp_warm_beats_warp_single", d)
    assert rec["per_seed"] == pytest.approx([0.05] * 3)
    assert rec["extra"]["a"] == ["warm_M2", "WARP"] and rec["extra"]["b"] == ["single", "WARP"]
    for cid in ("warp_helps_single", "warp_warm_beats_rl_warm"):
        assert _decide(cid, d)["n_seeds"] == 3
    # RL falls 0.2 from its peak at KL 1 (safe KL 1.0); neither WARP path falls (censored at 2.25).
    # Against WARP+single: 2.25 − 2.25; against RL+WARM: both capped at RL's reach 2.0, 2.0 − 1.0.
    # The smaller of the two is 0: a curve that only travels further gains nothing
    rec = _decide("warp_2x2_safe_kl", d)
    assert set(rec["extra"]["cells"]) == {"single/WARP", "warm_M2/RL", "warm_M2/WARP"}
    assert rec["extra"]["cells"]["warm_M2/RL"]["0"] == {"safe_kl": 1.0, "hacked": True,
                                                        "largest_kl": 2.0}
    assert rec["per_seed"] == pytest.approx([0.0] * 3) and rec["outcome"] == "inconclusive"
    # a WARP run against WARM alone (the default demo): only its comparison with RL is decided
    d = _data(methods=("warm_M2",))
    assert _decide("warp_warm_beats_rl_warm", d)["n_seeds"] == 3
    for cid in ("warp_helps_single", "warp_warm_beats_warp_single", "warp_2x2_safe_kl"):
        assert _decide(cid, d)["outcome"] is None
    assert _decide("warp_ema_front", {"eval": {}, "warp": {}})["outcome"] is None
