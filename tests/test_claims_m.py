"""WARM beyond M = 6 on synthetic run data with known answers: the pinned WARM of every comparison
claim (warm_M6 even when warm_M10 ran), and the two M = 10 claims' statistics, censoring and
missing inputs."""
import numpy as np
import pytest

from warm_jax.eval import claim_data as D
from warm_jax.eval import claims as C
from warm_jax.eval import claims_m as CM
from warm_jax.eval.evidence import decide


def _decide(claim_id, d):
    claim = C.REGISTRY[claim_id]
    return decide(claim, claim.compute(d), n_boot=500)


def _rows(method, seed, ctrl_first_half, ctrl_second_half, alpha=0.001, kl=None):
    """Held-out evaluations at steps 0, 50, ...; 4 selection prompts, then 4 judged ones."""
    kl = kl or list(range(len(ctrl_first_half)))
    rows = []
    for i, (k, a, b) in enumerate(zip(kl, ctrl_first_half, ctrl_second_half)):
        gold = [a] * 4 + [b] * 4
        rows.append({"step": 50 * i, "method": method, "run_alpha": alpha, "seed": seed, "kl": k,
                     "control_reward": float(np.mean(gold)), "gold_per_prompt": gold})
    return rows


def _empty():
    return {"analysis": {"clean": {}, "corrupt": {}}, "bon": [], "train": {}, "final": {},
            "eval": {}}


def test_main_warm_is_m6_where_run_else_the_largest_up_to_6():
    assert D.main_warm(["single", "warm_M2", "warm_M6", "warm_M10", "ens"]) == "warm_M6"
    assert D.beyond_warm(["single", "warm_M2", "warm_M6", "warm_M10"]) == "warm_M10"
    # the default demo and the tiny configs: their largest, as before the pin
    assert D.main_warm(["warm_M2", "warm_M6"]) == "warm_M6"
    assert D.beyond_warm(["warm_M2", "warm_M6"]) is None
    assert D.main_warm(["warm_M1", "warm_M2", "warm_M4"]) == "warm_M4"
    assert D.main_warm(["warm_M2", "warm_M7"]) == "warm_M2"    # tiny FULL=1
    assert D.beyond_warm(["warm_M2", "warm_M7"]) == "warm_M7"
    assert D.main_warm(["warm_M8"]) == "warm_M8" and D.beyond_warm(["warm_M8"]) is None
    assert D.main_warm(["single", "ens", "warm_M1"]) is None


def _pinning_data():
    """warm_M2, warm_M6 and warm_M10 side by side, each with its own known value."""
    d = _empty()
    level = {"single": 0.0, "warm_M2": 0.2, "warm_M6": 0.6, "warm_M10": 1.0}
    for s in range(3):
        for m, v in (("warm_M2", 1.0), ("warm_M6", 2.0), ("warm_M10", 5.0), ("ens", 1.5),
                     ("ens_M2", 0.5), ("wco", 1.25), ("uwo", 1.75), ("single", 0.0)):
            d["bon"].append({"seed": s, "method": m, "analysis": "auc", "values": [v] * 4})
        for m, v in level.items():
            for a in ((0.001, 0.01, 0.1) if m in ("single", "warm_M6") else (0.001,)):
                # rises from 0 to v, higher at smaller α
                y = v / (1 + 10 * a)
                d["eval"].setdefault(m, []).extend(_rows(m, s, [0, y, y], [0, y, y], alpha=a,
                                                         kl=[0, 1, 2]))
    return d


def test_comparison_claims_use_warm_m6_when_warm_m10_ran():
    d = _pinning_data()
    per_seed = lambda cid: _decide(cid, d)["per_seed"]  # noqa: E731
    assert per_seed("bon_warm_beats_smaller_m") == pytest.approx([2.0 - 1.0] * 3)
    # ENS, WCO and UWO combine all the members: WARM of all the members (M = 10) against them
    assert per_seed("bon_warm_beats_ens_all") == pytest.approx([5.0 - 1.5] * 3)
    assert per_seed("bon_warm_beats_wco") == pytest.approx([5.0 - 1.25] * 3)
    assert per_seed("bon_warm_beats_uwo") == pytest.approx([5.0 - 1.75] * 3)
    assert per_seed("bon_warm_beats_single") == pytest.approx([1.0] * 3)    # M = 2 by declaration
    assert per_seed("bon_warm_beats_ens") == pytest.approx([0.5] * 3)
    # RL: WARM M=6 − single, over the α both ran (the sweep's three)
    assert _decide("warm_smaller_fall", d)["extra"]["a"] == "warm_M6"
    assert _decide("warm_delays_collapse", d)["extra"]["a"] == "warm_M6"
    front = _decide("rl_front_at_kl", d)
    assert front["extra"]["a"] == "warm_M6" and front["extra"]["b"] == "single"
    assert _decide("rl_front_every_alpha", d)["extra"]["a"] == "warm_M6"
    alpha = _decide("warm_lower_best_alpha", d)
    assert alpha["extra"]["a"] == "warm_M6" and alpha["extra"]["alphas"] == [0.001, 0.01, 0.1]
    assert _decide("win_rate_warm_vs_single", d)["extra"]["reference"] == "warm_M6"
    assert _decide("win_rate_warm_vs_sft", d)["extra"]["method"] == "warm_M6"
    # the M = 10 claims: warm_M10 − warm_M6 at the α both ran (0.001)
    hack = _decide("m10_delays_hacking", d)
    assert (hack["extra"]["a"], hack["extra"]["b"]) == ("warm_M10", "warm_M6")
    assert hack["extra"]["alphas"] == [0.001]
    assert hack["per_seed"] == pytest.approx([0.0] * 3)   # neither falls from its plateau


def _m10_data(m6, m10, seeds=range(3), alphas6=(0.001,)):
    """warm_M6 and warm_M10 held-out curves (first half, second half) per seed."""
    d = _empty()
    d["eval"] = {"single": [], "warm_M2": [], "warm_M6": [], "warm_M10": []}
    for s in seeds:
        for a in alphas6:
            d["eval"]["warm_M6"] += _rows("warm_M6", s, *m6, alpha=a)
            d["eval"]["single"] += _rows("single", s, *m6, alpha=a)
        d["eval"]["warm_M10"] += _rows("warm_M10", s, *m10)
    return d


def test_m10_delays_hacking_is_the_gap_of_falls_from_the_peaks():
    # M=6 peaks at 1.0 and falls to 0.5 (hacked at step 100); M=10 peaks at 1.0, ends at 0.95
    m6 = ([0, 1.0, 0.5], [0, 1.0, 0.5])
    m10 = ([0, 1.0, 0.95], [0, 1.0, 0.95])
    d = _m10_data(m6, m10)
    r = _decide("m10_delays_hacking", d)
    # falls on the 4 judged prompts: M=6 1.0 − 0.5, M=10 1.0 − 0.95
    assert r["outcome"] == "reproduced" and r["n_units"] == 12
    assert r["per_seed"] == pytest.approx([0.5 - 0.05] * 3)
    # hacking steps: M=6 at step 100, M=10 never falls 0.1 below its peak (censored: None)
    assert r["extra"]["hack_step"]["warm_M6"]["alpha=0.001,seed=0"] == 100
    assert r["extra"]["hack_step"]["warm_M10"]["alpha=0.001,seed=0"] is None
    assert _decide("m10_delays_hacking", _m10_data(m10, m6))["outcome"] == "contradicted"
    assert _decide("m10_delays_hacking", _m10_data(m6, m6))["outcome"] != "reproduced"
    # warm_M6 swept α: only the α warm_M10 ran at is compared
    swept = _decide("m10_delays_hacking", _m10_data(m6, m10, alphas6=(0.001, 0.01)))
    assert swept["extra"]["alphas"] == [0.001] and swept["per_seed"] == pytest.approx([0.45] * 3)


def test_m10_claims_have_no_inputs_without_a_larger_m():
    d = _m10_data(([0, 1, 1], [0, 1, 1]), ([0, 1, 1], [0, 1, 1]))
    del d["eval"]["warm_M10"]      # the default demo: warm_M6 is the largest
    for cid in ("m10_delays_hacking", "m10_same_peak"):
        assert C.REGISTRY[cid].compute(d) is None and _decide(cid, d)["outcome"] is None
    # warm_M10 at an α warm_M6 did not run at: nothing shared, no inputs
    d = _m10_data(([0, 1, 1], [0, 1, 1]), ([0, 1, 1], [0, 1, 1]), alphas6=(0.01,))
    assert C.REGISTRY["m10_same_peak"].compute(d) is None


def test_m10_same_peak_judges_each_peak_on_the_other_prompts():
    # both pick step 50 on the selection half; judged there both are 1.0: the same peak, although
    # M=10's judged half is higher at step 100 (not its selected peak) and it ends higher
    m6 = ([0, 1.0, 0.5], [0, 1.0, 0.5])
    m10 = ([0, 1.0, 0.9], [0, 1.0, 1.3])
    r = _decide("m10_same_peak", _m10_data(m6, m10))
    assert r["kind"] == "equivalence" and r["per_seed"] == pytest.approx([0.0] * 3)
    assert r["outcome"] == "reproduced" and r["n_units"] == 12      # judged prompts: 4 x 3 seeds
    assert CM.PEAK_DELTA == D.HACK_MARGIN
    # a peak higher by 0.5 on every judged prompt: beyond the margin, contradicted
    higher = _decide("m10_same_peak", _m10_data(m6, ([0, 1.0, 0.5], [0, 1.5, 0.5])))
    assert higher["per_seed"] == pytest.approx([0.5] * 3) and higher["outcome"] == "contradicted"


def test_hacking_step_is_the_first_fall_below_the_running_peak_or_censored():
    rows = _rows("m", 0, [0, 0.5, 1.0, 0.95, 0.8, 1.2], [0, 0.5, 1.0, 0.95, 0.8, 1.2],
                 kl=[0, 1, 2, 3, 4, 5])
    assert CM.hacking_step(rows) == (200, 4.0, True)           # 0.8 < 1.0 − 0.1
    assert CM.hacking_step(rows, margin=0.5) == (250, 5.0, False)  # censored at the last step
    s = CM.m_summary(_m10_data(([0, 1.0, 0.5], [0, 1.0, 0.5]), ([0, 1.0, 0.95], [0, 1.0, 0.95]),
                               seeds=[0]))
    assert s["warm_M6"] == [{"alpha": 0.001, "seed": 0, "peak": 1.0, "final": 0.5, "hack_step": 100,
                             "hack_kl": 2.0, "hacked": True}]
    assert s["warm_M10"][0]["hacked"] is False and s["warm_M10"][0]["hack_step"] == 100


def test_report_section_counts_hacked_runs_and_their_steps_only():
    from warm_jax.report import m_section
    d = _empty()
    for s in range(3):
        # M = 6 falls 0.5 below its peak at step 100 on seed 0 only; M = 10 never falls
        d["eval"].setdefault("warm_M6", []).extend(
            _rows("warm_M6", s, [0, 1.0, 0.5 if s == 0 else 1.0], [0, 1.0, 0.5 if s == 0 else 1.0],
                  kl=[0, 1, 3]))
        d["eval"].setdefault("warm_M10", []).extend(
            _rows("warm_M10", s, [0, 1.0, 1.0], [0, 1.0, 1.0], kl=[0, 1, 2]))
    text = "\n".join(m_section(d))
    assert "warm_M10 against warm_M6" in text
    assert "| warm_M6 | 1.000 ± 0.000 | 0.833 ± 0.289 | 1 of 3 | 100 | 3.000 |" in text
    assert "| warm_M10 | 1.000 ± 0.000 | 1.000 ± 0.000 | 0 of 3 | – | – |" in text
    assert m_section(_empty()) == []
