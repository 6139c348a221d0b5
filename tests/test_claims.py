"""The claims registry on synthetic run data with known answers: what each claim's units are, and
that ties, reversed effects and missing inputs come out as the rules say."""
import numpy as np
import pytest

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
    assert _decide("larger_m_delays_collapse", less)["outcome"] is None


def _eval_rows(method, seed, kl, ctrl_first_half, ctrl_second_half):
    rows = []
    for step, (k, a, b) in enumerate(zip(kl, ctrl_first_half, ctrl_second_half)):
        gold = [a] * 4 + [b] * 4
        rows.append({"step": 50 * step, "method": method, "run_alpha": 0.001, "seed": seed,
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
    assert hack["per_seed"] == pytest.approx([1.0 - 0.5 - C.HACK_MARGIN] * 3)
    assert hack["outcome"] == "reproduced" and hack["unit"] == "seed"   # no spread: a sure drop
    front = _decide("rl_front_at_kl", d)
    # at KL 1: WARM 1.25 (mean of 0.5 and 2.0) vs single 1.0; at KL 2: 0.9 vs 0.8; KL 4 unreached
    assert front["per_seed"] == pytest.approx([np.mean([1.25 - 1.0, 0.9 - 0.8])] * 3)
    win = _decide("win_rate_warm_vs_single", d)
    # reference = WARM at step 100 (selection half 1.2 > 0.9 > 0.5): judged half 0.6 vs single's
    # final 0.5 -> WARM wins every judged prompt
    assert win["per_seed"] == pytest.approx([0.5] * 3)
    final = _decide("larger_m_delays_collapse", d)
    assert final["per_seed"] == pytest.approx([np.mean([0.9 - 0.5] * 8)] * 3)
