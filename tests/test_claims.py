"""The claims registry on synthetic run data with known answers: what each claim's units are, and
that ties, reversed effects and missing inputs come out as the rules say."""
import numpy as np
import pytest

from warm_jax.eval import claim_data as D
from warm_jax.eval import claims as C
from warm_jax.eval.evidence import decide


def _units_rows(split, values):
    return [{"analysis": "units", "split": split, "what": "wa_minus_ens", "values": list(values)}]


def _data(wa_minus_ens_corrupt, seeds=(0, 1, 2)):
    rng = np.random.default_rng(0)
    analysis = {"clean": {}, "corrupt": {}}
    for s in seeds:
        analysis["clean"][s] = _units_rows("validation", np.zeros(200))
        analysis["corrupt"][s] = _units_rows("train_corrupt", wa_minus_ens_corrupt(rng, s))
    return {"analysis": analysis, "bon": [], "train": {}, "eval": {}, "final": {}}


def _decide(claim_id, d):
    claim = C.REGISTRY[claim_id]
    return decide(claim, claim.compute(d), n_boot=500)


def test_pair_claims_decide_reproduced_tie_and_reversed():
    # WA fits 5% fewer flipped labels on every seed: the paper's direction (-1)
    less = _data(lambda rng, s: -(rng.random(400) < 0.05).astype(float))
    r = _decide("wa_memorises_less", less)
    assert r["outcome"] == "reproduced" and r["n_seeds"] == 3 and r["n_units"] == 1200
    assert r["effect"] == pytest.approx(np.mean(r["per_seed"])) and r["ci"][1] < 0
    tie = _data(lambda rng, s: np.zeros(400))
    assert _decide("wa_memorises_less", tie)["outcome"] != "reproduced"
    more = _data(lambda rng, s: (rng.random(400) < 0.05).astype(float))
    assert _decide("wa_memorises_less", more)["outcome"] == "contradicted"
    # identical WA and ENS on validation: inside the margin, so "WA ≈ ENS" is reproduced
    assert _decide("wa_approx_ens_id", less)["outcome"] == "reproduced"
    # no best-of-n or RL rows: those claims have no inputs and no outcome
    assert _decide("bon_warm_beats_single", less)["outcome"] is None
    assert _decide("warm_delays_collapse", less)["outcome"] is None


def _eval_rows(method, seed, kl, ctrl_first_half, ctrl_second_half, alpha=0.001):
    rows = []
    for step, (k, a, b) in enumerate(zip(kl, ctrl_first_half, ctrl_second_half)):
        gold = [a] * 4 + [b] * 4
        rows.append({"step": 50 * step, "method": method, "run_alpha": alpha, "seed": seed,
                     "kl": k, "control_reward": float(np.mean(gold)), "gold_per_prompt": gold})
    return rows


def test_rl_claims_use_held_out_evaluations():
    d = {"analysis": {"clean": {}, "corrupt": {}}, "bon": [], "train": {}, "final": {},
         "eval": {"single": [], "warm_M6": []}}
    for s in range(3):
        # the single RM: rises to 1.0 then falls to 0.5 (hacked); WARM: keeps rising
        d["eval"]["single"] += _eval_rows("single", s, [0, 1, 2, 3], [0, 1.0, 0.8, 0.5],
                                          [0, 1.0, 0.8, 0.5])
        # WARM's best step on the selection half (step 100) is NOT its best on the judged half
        d["eval"]["warm_M6"] += _eval_rows("warm_M6", s, [0, 1, 2, 3], [0, 0.5, 1.2, 0.9],
                                           [0, 2.0, 0.6, 0.9])
    hack = _decide("rl_single_hacking", d)
    # single's peak on the selection half is step 50 (1.0); judged half: a rise of 1.0 from step
    # 0 and a fall of 1.0 − 0.5 to the last step, each less its margin; both parts must hold
    assert hack["parts"]["rise"]["per_seed"] == pytest.approx([1.0 - D.RISE_MARGIN] * 3)
    assert hack["parts"]["fall"]["per_seed"] == pytest.approx([0.5 - D.FALL_MARGIN] * 3)
    assert hack["outcome"] == "reproduced" and hack["unit"] == "prompt"   # no spread: a sure drop
    assert hack["primary"] and not C.REGISTRY["rl_single_hacking_corrupt"].primary
    front = _decide("rl_front_at_kl", d)
    # WARM (mean of both halves) vs single, linear in KL from step 0 (KL 0, reward 0): at KL 0.25
    # 0.3125 vs 0.25, at 0.5 0.625 vs 0.5, at 1 1.25 vs 1.0, at 2 0.9 vs 0.8; KL 4 unreached
    assert front["per_seed"] == pytest.approx([np.mean([0.0625, 0.125, 0.25, 0.1])] * 3)
    assert front["extra"]["budgets"] == {"0.001": [0.25, 0.5, 1.0, 2.0]}
    win = _decide("win_rate_warm_vs_single", d)
    # WARM at its selection-half best (step 100: 1.2 > 0.9 > 0.5) judges 0.6; single at ITS
    # selection-half best (step 50: 1.0) judges 1.0, so WARM loses every judged prompt. Against
    # single's final step (0.5) it would have won them all: the best-vs-final bias is gone.
    assert win["per_seed"] == pytest.approx([-0.5] * 3)
    fall = _decide("warm_smaller_fall", d)
    # single falls 1.0 − 0.5 from its peak; WARM's peak (step 100 on the selection half) judges
    # 0.6 and it ends at 0.9: a fall of −0.3. Per judged prompt 0.5 − (−0.3)
    assert fall["per_seed"] == pytest.approx([0.8] * 3) and fall["outcome"] == "reproduced"
    # neither run falls below its step-0 reward: both censored at KL 3, a tie
    assert _decide("warm_delays_collapse", d)["per_seed"] == pytest.approx([0.0] * 3)


def test_collapse_is_looked_for_after_the_peak_only():
    from warm_jax.eval.claims_policy import collapse_kl
    # a noisy dip below step 0 at step 50, while the reward still rises to its peak at step 100
    rows = _eval_rows("single", 0, [0, 0.5, 1, 2, 3], [0.5, 0.45, 1.0, 0.7, 0.2],
                      [0.5, 0.45, 1.0, 0.7, 0.2])
    kl, collapsed = collapse_kl(rows)
    assert collapsed and kl == pytest.approx(2 + (0.7 - 0.5) / (0.7 - 0.2))


def test_fall_is_compared_at_matched_kl():
    from warm_jax.eval.claim_data import fall_at_kl, per_prompt_at_kl
    # the single RM's run travels to KL 4 and collapses; WARM's stops at KL 2, still on its peak
    single = _eval_rows("single", 0, [0, 1, 2, 4], [0, 1.0, 0.6, -1.0], [0, 1.0, 0.6, -1.0])
    warm = _eval_rows("warm_M6", 0, [0, 1, 2, 2], [0, 1.0, 1.0, 1.0], [0, 1.0, 1.0, 1.0])
    assert per_prompt_at_kl(single, 3.0) == pytest.approx([-0.2] * 8)
    assert fall_at_kl(single, 2.0) == pytest.approx([0.4] * 4)   # not 2.0 at its last step
    assert fall_at_kl(warm, 2.0) == pytest.approx([0.0] * 4)
    d = _policy([dict(r, seed=s) for s in range(3) for r in single],
                [dict(r, seed=s) for s in range(3) for r in warm])
    rec = _decide("warm_smaller_fall", d)
    assert rec["per_seed"] == pytest.approx([0.4] * 3)
    assert rec["extra"]["largest_kl"]["alpha=0.001,seed=0"] == {"warm_M6": 2.0, "single": 4.0}


def test_collapse_kl_is_interpolated_censored_and_capped():
    from warm_jax.eval.claims_policy import capped_collapse_gap, collapse_kl
    single = _eval_rows("single", 0, [0, 1, 2, 3], [0.5, 1.0, 0.6, 0.0], [0.5, 1.0, 0.6, 0.0])
    warm = _eval_rows("warm_M6", 0, [0, 1, 2, 4], [0.5, 1.0, 1.1, 0.9], [0.5, 1.0, 1.1, 0.9])
    # single first falls below 0.5 between KL 2 (0.6) and KL 3 (0.0): at 2 + 0.1 / 0.6
    assert collapse_kl(single) == (pytest.approx(2 + 1 / 6), True)
    assert collapse_kl(warm) == (4.0, False)
    # WARM is censored at KL 4, but single's runs end at KL 3: WARM counts as 3, not 4
    assert capped_collapse_gap(warm, single) == pytest.approx(3 - (2 + 1 / 6))
    d = _policy([dict(r, seed=s) for s in range(3) for r in single],
                [dict(r, seed=s) for s in range(3) for r in warm])
    rec = _decide("warm_delays_collapse", d)
    assert rec["per_seed"] == pytest.approx([5 / 6] * 3) and rec["unit"] == "seed"
    assert rec["extra"]["collapse_kl_and_collapsed"]["alpha=0.001,seed=0"]["single"] == [
        pytest.approx(2.1667, abs=1e-4), True]


def test_rl_front_judges_every_seed_on_the_budgets_all_runs_reach():
    d = {"analysis": {"clean": {}, "corrupt": {}}, "bon": [], "train": {}, "final": {},
         "eval": {"single": [], "warm_M6": []}}
    for s in range(3):
        top = 3 if s < 2 else 1.5     # seed 2's runs never reach KL 2
        d["eval"]["single"] += _eval_rows("single", s, [0, 1, top], [0, 1, 1], [0, 1, 1])
        d["eval"]["warm_M6"] += _eval_rows("warm_M6", s, [0, 1, top], [0, 2, 2], [0, 2, 2])
    front = _decide("rl_front_at_kl", d)
    # KL 2 is not reached by every run: all three seeds stay in, each judged at KL 0.25, 0.5, 1
    assert front["extra"]["budgets"] == {"0.001": [0.25, 0.5, 1.0]} and front["n_seeds"] == 3
    assert front["per_seed"] == pytest.approx([np.mean([0.25, 0.5, 1.0])] * 3)


def _policy(single, warm):
    return {"analysis": {"clean": {}, "corrupt": {}}, "bon": [], "train": {}, "final": {},
            "eval": {"single": single, "warm_M6": warm}}


def test_alpha_sweep_claims():
    alphas = (0.0003, 0.001, 0.003)
    # fronts: KL 0 → 1 → 3, single's control reward 0 → 1 → 1, WARM's 0 → 1 + g → 1 + g
    single, warm = [], []
    for s in range(3):
        for a, g in zip(alphas, (0.3, 0.1, 0.2)):
            single += _eval_rows("single", s, [0, 1, 3], [0, 1, 1], [0, 1, 1], alpha=a)
            warm += _eval_rows("warm_M6", s, [0, 1, 3], [0, 1 + g, 1 + g], [0, 1 + g, 1 + g],
                               alpha=a)
    front = _decide("rl_front_every_alpha", _policy(single, warm))
    # budgets 0.25 … 2 reached (KL 4 not): gap k·g up to KL 1, g at KL 2; the smallest g is 0.1
    per_budget = np.mean([0.25, 0.5, 1.0, 1.0])
    assert front["per_seed"] == pytest.approx([0.1 * per_budget] * 3)
    assert front["outcome"] == "reproduced" and front["extra"]["seeds_left_out"] == []
    assert front["extra"]["gap_per_alpha"]["0.0003"] == pytest.approx(0.3 * per_budget, abs=1e-4)
    # WARM's front below at one α: the minimum is biased low, so it is not called contradicted
    worse = [dict(r, gold_per_prompt=[x - 0.3 * (r["step"] > 0) for x in r["gold_per_prompt"]],
                  control_reward=r["control_reward"] - 0.3 * (r["step"] > 0))
             if r["run_alpha"] == 0.001 else r for r in warm]
    below = _decide("rl_front_every_alpha", _policy(single, worse))
    assert below["ci"][1] < 0 and below["outcome"] == "inconclusive"
    assert "cannot contradict" in below["reason"] and "never contradicted" in below["rule"]
    # two α only: no sweep, no inputs
    two = _policy([r for r in single if r["run_alpha"] != 0.003],
                  [r for r in warm if r["run_alpha"] != 0.003])
    assert _decide("rl_front_every_alpha", two)["outcome"] is None
    # best α: the single RM's final control reward rises with α, WARM's falls (seed 2: peaks in
    # the middle); the statistic is the slope over log10 α, single − WARM
    final_s = (0.2, 0.5, 0.8)
    final_w = {0: (1.0, 0.9, 0.7), 1: (1.0, 0.9, 0.7), 2: (0.8, 0.9, 0.7)}
    single = [r for s in range(3) for a, y in zip(alphas, final_s)
              for r in _eval_rows("single", s, [0, 1], [0, y], [0, y], alpha=a)]
    warm = [r for s in range(3) for a, y in zip(alphas, final_w[s])
            for r in _eval_rows("warm_M6", s, [0, 1], [0, y], [0, y], alpha=a)]
    slope = lambda y: np.polyfit(np.log10(alphas), y, 1)[0]  # noqa: E731
    best = _decide("warm_lower_best_alpha", _policy(single, warm))
    assert best["per_seed"] == pytest.approx([slope(final_s) - slope(final_w[s]) for s in range(3)])
    assert best["extra"]["best_alpha"]["warm_M6"] == {"0": 0.0003, "1": 0.0003, "2": 0.001}
    assert best["extra"]["best_alpha"]["single"]["0"] == 0.003 and best["outcome"] == "reproduced"
    # a seed missing one α of the grid is left out, not judged on a shorter grid
    gap = [r for r in warm if not (r["seed"] == 2 and r["run_alpha"] == 0.001)]
    assert _decide("warm_lower_best_alpha", _policy(single, gap))["extra"]["seeds"] == [0, 1]


def test_corrupt_label_policy_claims_read_the_corrupt_runs_only():
    single, warm = [], []
    for s in range(3):
        single += _eval_rows("single", s, [0, 1, 2, 3], [0, 1.0, 0.8, 0.5], [0, 1.0, 0.8, 0.5])
        warm += _eval_rows("warm_M6", s, [0, 1, 2, 3], [0, 0.5, 1.2, 0.9], [0, 2.0, 0.6, 0.9])
    clean_only = _policy(single, warm)
    assert _decide("rl_front_at_kl_corrupt", clean_only)["outcome"] is None
    corrupt_only = dict(_policy([], []), corrupt_policy=_policy(single, warm))
    assert _decide("rl_front_at_kl", corrupt_only)["outcome"] is None
    for cid in ("rl_front_at_kl", "win_rate_warm_vs_single", "rl_single_hacking"):
        mirrored = _decide(cid + "_corrupt", corrupt_only)
        assert mirrored["per_seed"] == _decide(cid, clean_only)["per_seed"], cid
        assert mirrored["figure"] == C.REGISTRY[cid].figure + "_corrupt"


def test_lmc_claims_count_each_evaluation_pair_once():
    rows = []
    for pair, v in (("data_order", [1.0, 0.0]), ("baklava", [0.0, 0.0]), ("same_run", [5.0, 5.0])):
        rows.append({"analysis": "lmc_units", "split": "validation", "pair": pair,
                     "what": "wa_minus_ens", "values": v})
    d = {"analysis": {"clean": {s: rows for s in range(3)}, "corrupt": {}}, "bon": [],
         "train": {}, "eval": {}, "final": {}}
    r = _decide("lmc_wa_approx_ens", d)
    # two evaluation pairs per seed, each the mean over the diversity pairs; same_run left out
    assert r["n_units"] == 6 and r["per_seed"] == pytest.approx([0.25] * 3)


def test_bon_ens_claim_is_warm_m2_against_ens_m2():
    d = {"analysis": {"clean": {}, "corrupt": {}}, "train": {}, "eval": {}, "final": {}, "bon": []}
    for s in range(3):
        for m, v in (("warm_M2", 1.0), ("ens_M2", 0.5), ("warm_M6", 2.0), ("ens", 3.0)):
            d["bon"].append({"seed": s, "method": m, "analysis": "auc", "values": [v] * 4})
    assert _decide("bon_warm_beats_ens", d)["per_seed"] == pytest.approx([0.5] * 3)
    assert _decide("bon_warm_beats_ens_all", d)["per_seed"] == pytest.approx([-1.0] * 3)


def test_trend_claim_is_the_slope_of_wa_minus_ens_away_from_the_train_data():
    d = {"analysis": {"clean": {}, "corrupt": {}}, "bon": [], "train": {}, "eval": {}, "final": {}}
    for s, slope in ((0, 0.02), (1, 0.025), (2, 0.03)):
        d["analysis"]["corrupt"][s] = sum((_units_rows(k, np.full(50, slope * i - 0.02))
                                           for i, k in enumerate(D.TREND_SUBSETS)), [])
    r = _decide("wa_vs_ens_grows_off_train", d)
    assert r["unit"] == "seed" and r["per_seed"] == pytest.approx([0.02, 0.025, 0.03])
    assert r["outcome"] == "reproduced"


def test_win_rate_against_sft_uses_each_run_step_zero():
    d = {"analysis": {"clean": {}, "corrupt": {}}, "bon": [], "train": {}, "final": {},
         "eval": {"single": [], "warm_M6": []}}
    for s in range(3):
        d["eval"]["single"] += _eval_rows("single", s, [0, 1, 2], [0.5, 1.0, 0.2], [0.5, 0.4, 0.7])
        d["eval"]["warm_M6"] += _eval_rows("warm_M6", s, [0, 1, 2], [0.5, 1.0, 0.2], [0.5, 0.6, 0.7])
    # both pick step 1 on the selection half; judged: single 0.4 < SFT 0.5, WARM 0.6 > 0.5
    assert _decide("win_rate_single_vs_sft", d)["per_seed"] == pytest.approx([-0.5] * 3)
    assert _decide("win_rate_warm_vs_sft", d)["per_seed"] == pytest.approx([0.5] * 3)


def test_ood_claims_read_the_sampled_split_where_the_run_has_it():
    d = _data(lambda rng, s: np.zeros(10))
    for s in range(3):
        d["analysis"]["clean"][s] += (_units_rows("test", np.full(100, -0.1))
                                      + _units_rows("ood", np.full(100, 0.1)))
    r = _decide("wa_beats_ens_ood", d)
    assert r["per_seed"] == pytest.approx([0.1] * 3) and r["extra"]["split"] == "ood"
    for s in range(3):   # a run without the ood_pairs stage: the offline test split
        d["analysis"]["clean"][s] = [x for x in d["analysis"]["clean"][s] if x["split"] != "ood"]
    r = _decide("wa_beats_ens_ood", d)
    assert r["per_seed"] == pytest.approx([-0.1] * 3) and r["extra"]["split"] == "test"
