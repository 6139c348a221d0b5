"""The RL-regime calibration: its pass rule on hand-built curves, its refusals, and one tiny run
that judges candidates in order on pilot seeds without reading anything of the evaluation seeds."""
import os

import numpy as np
import pytest

from warm_jax.data.toy import ToyTask, ToyTaskConfig
from warm_jax.rl.calibrate import (Candidate, PassRule, check_pilot, judge_candidate, judge_run,
                                   record_table)
from warm_jax.average.stage import AverageConfig
from warm_jax.rm.stage import RMConfig
from warm_jax.rl.calibrate import CalibrationConfig

RULE = PassRule(min_rise=0.1, min_fall=0.3, max_final_kl=20.0, min_seeds=2)


def rows(select_means, judged_means, kls, n=8, step=25):
    """Evaluation rows whose first half of prompts averages `select_means[i]` at evaluation i and
    whose second half averages `judged_means[i]`."""
    out = []
    for i, (a, b, kl) in enumerate(zip(select_means, judged_means, kls)):
        out.append({"step": i * step, "kl": kl,
                    "gold_per_prompt": [a] * (n // 2) + [b] * (n - n // 2)})
    return out


def test_rise_then_fall_passes_and_its_numbers_are_the_judged_halfs():
    r = judge_run(rows([1.0, 1.3, 1.2, 0.5], [1.0, 1.25, 1.1, 0.8], [0, 1, 3, 8]), 75, RULE)
    assert r == {"peak_step": 25, "rise": 0.25, "fall": 0.45, "final_kl": 8.0, "passes": True}


@pytest.mark.parametrize("select,judged,kls,why", [
    ([1.0, 1.02, 1.01, 1.0], [1.0, 1.01, 1.0, 1.0], [0, 1, 2, 3], "flat"),
    ([1.0, 1.2, 1.3, 1.4], [1.0, 1.2, 1.3, 1.4], [0, 1, 2, 3], "rises, never falls"),
    ([1.0, 0.8, 0.5, 0.2], [1.0, 0.8, 0.5, 0.2], [0, 1, 2, 3], "falls without a rise"),
    ([1.0, 1.3, 1.0, 0.2], [1.0, 1.3, 1.0, 0.2], [0, 5, 12, 25], "final KL above 20"),
])
def test_runs_that_do_not_over_optimise_fail(select, judged, kls, why):
    assert not judge_run(rows(select, judged, kls), 75, RULE)["passes"], why


def test_a_lucky_peak_on_the_selection_half_is_judged_on_the_other_half():
    # step 25 looks best on the selection prompts, but on the judged prompts it sits at step 0's
    # level: no rise is credited, however far the run falls afterwards
    r = judge_run(rows([1.0, 1.6, 1.1, 0.2], [1.0, 1.02, 1.3, 0.2], [0, 1, 2, 3]), 75, RULE)
    assert r["peak_step"] == 25 and r["rise"] == pytest.approx(0.02) and not r["passes"]


def test_a_candidate_is_judged_on_its_own_prefix_and_needs_min_seeds():
    hack = rows([1.0, 1.3, 1.2, 0.5], [1.0, 1.3, 1.2, 0.5], [0, 1, 2, 4])
    flat = rows([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0, 1, 2, 4])
    long = Candidate(1e-3, 75, 0.001)
    assert judge_candidate({0: hack, 1: hack, 2: flat}, long, RULE)["passes"]
    assert not judge_candidate({0: hack, 1: flat, 2: flat}, long, RULE)["passes"]
    # the same runs cut at step 25 have not fallen yet
    short = judge_candidate({0: hack, 1: hack}, Candidate(1e-3, 25, 0.001), RULE)
    assert short["seeds_passing"] == 0 and short["per_seed"][0]["fall"] == 0.0
    with pytest.raises(ValueError, match="need evaluations at step 0 and at step 50"):
        judge_run(hack[:2], 50, RULE)


def test_pilot_seeds_and_prompts_must_be_disjoint_from_the_evaluation_ones():
    task = ToyTask(ToyTaskConfig(n_eval_prompts=64))
    pilot, held_out = task.prompts("pilot"), task.prompts("eval")
    assert pilot.shape == (4 * len(held_out), held_out.shape[1])
    assert not {p.tobytes() for p in pilot} & {p.tobytes() for p in held_out}
    assert check_pilot(task, (100, 101), range(10), "pilot", 64)["shared_with_eval"] == 0
    with pytest.raises(ValueError, match=r"seeds \[3\] are evaluation seeds"):
        check_pilot(task, (3, 100), range(10), "pilot", 64)
    with pytest.raises(ValueError, match="needs a disjoint split"):
        check_pilot(task, (100,), range(10), "eval", 64)


def test_calibration_runs_in_order_stops_at_the_first_pass_and_reads_no_evaluation_seed(toy_init):
    from warm_jax.average.stage import average_reward_models
    from warm_jax.rl.calibrate import calibrate_regime
    from warm_jax.rl.reinforce import RLConfig
    from warm_jax.rm.diversity import DiversityConfig
    from warm_jax.rm.stage import train_reward_models
    import shutil
    src, task, cfg = toy_init
    wd = src + "_calibrate"
    shutil.copytree(src, wd)
    pilot = (100, 101)
    train_reward_models(workdir=wd, task=task, model_cfg=cfg,
                        cfg=RMConfig(name="clean", seeds=pilot,
                                     diversity=DiversityConfig(num_members=2, baklava_steps=(150, 200)),
                                     num_steps=4, batch_size=16, probe_steps=2, mode="population",
                                     population_impl="map"))
    average_reward_models(workdir=wd, task=task, model_cfg=cfg,
                          cfg=AverageConfig(name="clean", seeds=pilot, m_values=(1,),
                                            analyses=False, greedy=False))
    analysis = os.path.join(wd, "rm", "clean", "seed_100", "analysis.jsonl")
    assert [r["analysis"] for r in __import__("warm_jax.metrics", fromlist=["x"]).read_jsonl(
        analysis)] == ["eval_sizes"]   # no WA or ENS was formed on a pilot seed
    assert sorted(os.listdir(os.path.join(wd, "rm", "clean", "seed_100", "averages"))) == [
        "warm_M1"]
    # evaluation seeds' files that a calibration must never read: unreadable garbage
    for s in (0, 1):
        poison = os.path.join(wd, "rm", "clean", f"seed_{s}", "averages", "warm_M1")
        os.makedirs(poison)
        open(os.path.join(poison, "garbage"), "w").write("not a checkpoint")
    cands = [(1e-4, 10, 0.001), (1e-3, 10, 0.001), (1e-3, 5, 0.001)]
    kw = dict(seeds=pilot, evaluation_seeds=tuple(range(10)), candidates=cands,
              rl=RLConfig(batch_size=8), chunk=5, eval_prompts=8)
    run = lambda **more: calibrate_regime(workdir=wd, task=task, model_cfg=cfg,  # noqa: E731
                                          cfg=CalibrationConfig(**kw, **more))
    # a rule every run meets: the first candidate is chosen, the later ones never run
    easy = PassRule(min_rise=-1e9, min_fall=-1e9, max_final_kl=1e9, min_seeds=2)
    rec = run(rule=easy, record=os.path.join(wd, "rec.json"))
    assert rec["chosen"] == {"learning_rate": 1e-4, "steps": 10, "alpha": 0.001}
    assert [r["status"] for r in rec["results"]] == [
        "passed", "not run: an earlier candidate passed", "not run: an earlier candidate passed"]
    assert sorted(os.listdir(os.path.join(wd, "calibration", "round1"))) == [
        "lr_0.0001", "record.json", "stage_config.json"]
    assert set(rec["results"][0]["per_seed"]) == set(pilot)
    assert "| 0.0001, 10, 0.001 | passed (2 seeds pass) | 100 |" in record_table(rec)
    assert os.path.exists(os.path.join(wd, "rec.md"))
    # a rule no run meets, in a fresh directory: every candidate runs, none is chosen; the two
    # candidates at lr 1e-3 are one program of 10 steps, the 5-step one judged on its prefix
    shutil.rmtree(os.path.join(wd, "calibration"))
    never = PassRule(min_rise=1e9, min_fall=0.3, max_final_kl=20.0, min_seeds=1)
    rec = run(rule=never)
    assert rec["chosen"] is None and [r["status"] for r in rec["results"]] == ["failed"] * 3
    assert sorted(d for d in os.listdir(os.path.join(wd, "calibration", "round1"))
                  if d.startswith("lr_")) == ["lr_0.0001", "lr_0.001"]
    five = rec["results"][2]["per_seed"][100]
    ten = rec["results"][1]["per_seed"][100]
    assert five["final_kl"] != ten["final_kl"] and 5 >= five["peak_step"] > 0
    assert np.isfinite([v["rise"] for r in rec["results"] for v in r["per_seed"].values()]).all()
