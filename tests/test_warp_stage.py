"""The `warp` stage (`warm_jax.rl.warp_stage`) end to end on the toy init: EMA-anchored policies,
their export, SLERP / LERP merges and LITI points, evaluated with KL to the SFT policy; NaN in an
iteration's policies stops the stage keeping nothing of that iteration; a rerun resumes at its first
unfinished iteration and ends where an uninterrupted run does."""
import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warm_jax.checkpoint import restore_params
from warm_jax.metrics import read_jsonl
from warm_jax.rl.reinforce import RLConfig
from warm_jax.average.stage import AverageConfig
from warm_jax.rm.stage import RMConfig



def test_warp_stage_merges_evaluates_iterates_and_resumes(toy_init, tmp_path, monkeypatch):
    from warm_jax.average.stage import average_reward_models
    from warm_jax.checkpoint import NonFiniteError
    from warm_jax.rl import warp_stage
    from warm_jax.rl.warp_stage import WARPConfig, warp_policies
    from warm_jax.rm.diversity import DiversityConfig
    from warm_jax.rm.stage import train_reward_models
    src, task, cfg = toy_init
    wd = str(tmp_path / "wd")
    shutil.copytree(src, wd, ignore=lambda d, names: [n for n in names if n in ("rm", "rl")])
    train_reward_models(workdir=wd, task=task, model_cfg=cfg,
                        cfg=RMConfig(name="wp", num_steps=10, batch_size=16, probe_steps=5,
                                     population_impl="map",
                                     diversity=DiversityConfig(num_members=2)))
    average_reward_models(workdir=wd, task=task, model_cfg=cfg,
                          cfg=AverageConfig(name="wp", m_values=(1,), greedy=False, lmc_pairs={},
                                            max_eval_pairs=100, m_curve=False))
    wcfg = WARPConfig(rm_name="wp", methods=("single",), n_policies=2, iterations=2, num_steps=4,
                      chunk=2, etas=(0.0, 0.3, 1.0), next_eta=0.3, rl=RLConfig(batch_size=16),
                      eval_prompts=16, ensemble_impl="map")
    kw = dict(task=task, model_cfg=cfg, cfg=wcfg)
    root = warp_policies(workdir=wd, **kw)
    mdir = os.path.join(root, "single")
    rows = read_jsonl(os.path.join(mdir, "final.jsonl"))
    along = [r for r in rows if r["point"] == "along"]
    assert sorted({(r["iteration"], r["step"]) for r in along}) == [
        (i, s) for i in (1, 2) for s in (0, 2, 4)]
    start1 = [r for r in along if r["iteration"] == 1 and r["step"] == 0]
    assert [r["kl"] for r in start1] == [0.0, 0.0]         # iteration 1 starts at the SFT policy
    start2 = [r for r in along if r["iteration"] == 2 and r["step"] == 0]
    assert start2[0]["kl"] == start2[1]["kl"] > 0            # one init, LITI η = 0.3, not SFT
    merged = {(r["iteration"], r["point"], r["eta"]): r for r in rows if r["point"] != "along"}
    assert set(merged) == {(i, p, e) for i in (1, 2) for p, e in
                           (("slerp", 0.0), ("slerp", 0.3), ("slerp", 1.0), ("lerp", 1.0))}
    assert merged[(1, "slerp", 0.0)]["kl"] == 0.0            # LITI η = 0 of iteration 1: SFT
    assert merged[(2, "slerp", 0.0)]["kl"] > 0               # ... of iteration 2: its init
    assert all(np.mean(r["gold_per_prompt"]) == pytest.approx(r["control_reward"], abs=1e-4)
               for r in rows)
    # LERP at η = 1 is the plain average of the seed's two exported policies
    it1 = os.path.join(mdir, "iter_1")
    pols = [restore_params(os.path.join(it1, "policies", f"run_{r}"))[0] for r in (0, 1)]
    lerp = restore_params(os.path.join(it1, "seed_0", "lerp"))[0]
    jax.tree.map(lambda l, a, b: np.testing.assert_allclose(np.asarray(l), (np.asarray(a) +
                 np.asarray(b)) / 2, rtol=1e-5, atol=1e-6), lerp, *pols)
    # the claims read these rows: SLERP − LERP of iteration 1, per prompt, from the stage's own rows
    from warm_jax.eval import evidence as E
    from warm_jax.eval.claim_data import load
    from warm_jax.eval.claims import REGISTRY
    claim = REGISTRY["warp_slerp_beats_lerp"]
    rec = E.decide(claim, claim.compute(load(wd, rm_name="wp")))
    gap = np.subtract(merged[(1, "slerp", 1.0)]["gold_per_prompt"],
                      merged[(1, "lerp", 1.0)]["gold_per_prompt"]).mean()
    assert rec["n_seeds"] == 1 and rec["effect"] == pytest.approx(gap, abs=1e-9)
    assert rec["outcome"] == "inconclusive"                   # one seed never decides
    # iteration 2 lost (as if killed during it), then NaN in its policies: the stage stops naming
    # the iteration and keeps nothing of it; the clean rerun redoes it alone, to the same rows
    os.remove(os.path.join(mdir, "final.jsonl"))
    os.remove(os.path.join(mdir, "iter_2", "eval.jsonl"))
    t1 = os.path.getmtime(os.path.join(it1, "eval.jsonl"))
    real = warp_stage.run_chunk
    with monkeypatch.context() as mp:
        mp.setattr(warp_stage, "run_chunk", lambda step, st, n, fn: real(
            step, st.replace(rl=st.rl.replace(policy=jax.tree.map(lambda x: x * jnp.nan,
                                                                  st.rl.policy))), n, fn))
        with pytest.raises(NonFiniteError, match=r"warp wp/single, iteration 2: non-finite"):
            warp_policies(workdir=wd, **kw)
    assert not os.path.exists(os.path.join(mdir, "iter_2", "eval.jsonl"))
    assert not os.path.exists(os.path.join(mdir, "final.jsonl"))
    warp_policies(workdir=wd, **kw)
    assert read_jsonl(os.path.join(mdir, "final.jsonl")) == rows
    assert os.path.getmtime(os.path.join(it1, "eval.jsonl")) == t1
    with pytest.raises(ValueError, match=r"WARPConfig.next_eta=0.5: one of etas"):
        dataclasses.replace(wcfg, next_eta=0.5)
