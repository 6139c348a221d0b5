import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warm_jax.checkpoint import Checkpointer, flatten, restore_params
from warm_jax.metrics import read_jsonl
from warm_jax.rm.diversity import DiversityConfig, expand
from warm_jax.rm.loss import bradley_terry, split_accuracies
from warm_jax.rm.population import set_learning_rate
from warm_jax.rm.stage import RMConfig, train_reward_models
from warm_jax.train import OptimConfig, make_optimizer


def test_bradley_terry_against_hand_computed_values():
    rc, rr = jnp.array([2.0, 0.0, -1.0, 0.5]), jnp.array([1.0, 0.0, 1.0, 0.5])
    loss, acc = bradley_terry(rc, rr)
    # -log σ(1) = 0.313262, -log σ(0) = 0.693147, -log σ(-2) = 2.126928
    np.testing.assert_allclose(loss, (0.313262 + 0.693147 + 2.126928 + 0.693147) / 4, rtol=1e-5)
    assert float(acc) == 0.25  # ties do not count as correct


def test_split_accuracies_use_the_corrupted_mask():
    rc = np.array([1.0, 1.0, 0.0, 0.0, 1.0])
    rr = np.array([0.0, 2.0, 1.0, -1.0, 0.0])
    flipped = np.array([True, True, False, False, False])
    out = split_accuracies(rc, rr, "train", flipped)
    assert out == {"train": 0.6, "train_corrupt": 0.5, "train_clean": 2 / 3}
    assert split_accuracies(rc, rr, "validation") == {"validation": 0.6}


def test_diversity_spec_expansion_and_learning_rate_injection():
    specs = expand(DiversityConfig(num_members=4, learning_rates=(1e-4, 1e-3), dropouts=(0.0, 0.1, 0.2),
                                   baklava_steps=(100, 200)), final_sft_step=200)
    assert [s.learning_rate for s in specs] == [1e-4, 1e-3, 1e-4, 1e-3]
    assert [s.dropout for s in specs] == [0.0, 0.1, 0.2, 0.0]
    assert [s.init_step for s in specs] == [100, 200, 100, 200]
    assert len({s.data_seed for s in specs}) == 4 and len({s.rng_seed for s in specs}) == 4
    tx = make_optimizer(OptimConfig(learning_rate=1.0))
    st = set_learning_rate(tx.init({"w": jnp.ones(2)}), 3e-4)
    assert float(st[-1].hyperparams["step_size"]) == pytest.approx(-3e-4)
    with pytest.raises(ValueError, match=r"DiversityConfig.dropouts\[i\]=0.95 is out of range"):
        DiversityConfig(dropouts=(0.95,))


DIV = DiversityConfig(num_members=3, learning_rates=(1e-3, 3e-3), dropouts=(0.0, 0.1),
                      baklava_steps=(100, 150, 200))


def load_member(rm_dir, m, seed=0):
    return restore_params(os.path.join(rm_dir, f"seed_{seed}", "members", f"member_{m}"))


def _train(wd, task, cfg, **kw):
    args = dict(diversity=DIV, num_steps=40, batch_size=16, probe_steps=20, ckpt_every=20)
    args.update(kw)
    return train_reward_models(workdir=wd, task=task, model_cfg=cfg, cfg=RMConfig(**args))


def test_population_member_equals_separate_run_and_every_rm_beats_chance(toy_init):
    wd, task, cfg = toy_init
    pop = _train(wd, task, cfg, name="pop", mode="population")
    sep = _train(wd, task, cfg, name="sep", mode="separate")
    popmap = _train(wd, task, cfg, name="popmap", mode="population", population_impl="map")
    for m, other in [(0, sep), (1, sep), (2, sep), (0, popmap), (2, popmap)]:
        a, meta_a = load_member(pop, m)
        b, meta_b = load_member(other, m)
        # same math, different reduction order (vmap, sharding); Adam amplifies ~1e-7 into ~1e-5
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-4), a, b)
        for split in ("validation", "test", "train_corrupt" if "train_corrupt" in meta_a["accuracy"]
                      else "train"):
            assert abs(meta_a["accuracy"][split] - meta_b["accuracy"][split]) <= 0.004
        assert meta_a["spec"] == meta_b["spec"] and meta_a["base_fingerprint"]
    a0, a1 = load_member(pop, 0)[0], load_member(pop, 1)[0]
    assert not np.allclose(a0["reward_head"]["kernel"], a1["reward_head"]["kernel"]), "members identical"
    rows = read_jsonl(os.path.join(pop, "seed_0", "eval.jsonl"))
    assert [r["member"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["validation"] > 0.58, r  # chance is 0.5; the labels' ceiling is ~0.72
    # the shared linear probe kept the SFT body and trained the head
    probe = restore_params(os.path.join(pop, "seed_0", "linear_probe"))[0]
    sft_final = restore_params(os.path.join(wd, "sft", "checkpoints"))[0]
    for k, v in flatten(probe["body"]).items():
        np.testing.assert_array_equal(v, flatten(sft_final["body"])[k])


@pytest.mark.parametrize("mode", ["population", "separate"])
def test_preempted_and_resumed_is_bit_identical(toy_init, monkeypatch, mode):
    """SIGTERM mid-training: the state is saved at the next step, the stage stops, a rerun ends
    exactly where an uninterrupted run does. (SIGKILL from outside: tests/test_faults.py.)"""
    from warm_jax import guards, train
    wd, task, cfg = toy_init
    full = _train(wd, task, cfg, name=f"full_{mode}", mode=mode, members=[1])
    hits = []

    def sigterm_at_step_23(name):  # the linear probe's 20 steps come first
        hits.append(name)
        if len(hits) == 20 + 23:
            os.kill(os.getpid(), signal.SIGTERM)

    old = signal.getsignal(signal.SIGTERM)
    guards.install_preemption_handler()
    monkeypatch.setattr(train, "kill_point", sigterm_at_step_23)
    try:
        with pytest.raises(guards.Preempted, match="after saving step 23"):
            _train(wd, task, cfg, name=f"part_{mode}", mode=mode, members=[1])
    finally:
        signal.signal(signal.SIGTERM, old)
        guards.clear_preemption()
    part = os.path.join(wd, "rm", f"part_{mode}")
    run = os.path.join(part, "train", "population") if mode == "population" else \
        os.path.join(part, "seed_0", "train", "member_1")
    assert Checkpointer(os.path.join(run, "checkpoints")).latest_step() == 23
    assert not os.path.exists(os.path.join(part, "seed_0", "members"))
    monkeypatch.undo()
    resumed = _train(wd, task, cfg, name=f"part_{mode}", mode=mode, members=[1])
    a, b = load_member(full, 1)[0], load_member(resumed, 1)[0]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rows = read_jsonl(os.path.join(run, "train.jsonl"))
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows}), "duplicated rows"


def test_chain_seeds_are_one_population_and_each_equals_its_own_run(toy_init):
    """Seeds are an axis of the population: 2 seeds x 2 members train as one program, and the
    member of chain seed 1 equals that member trained alone (separate mode). Chain seed 1 draws
    its own training labels over the same pairs; the evaluation splits are shared."""
    wd, task, cfg = toy_init
    div = DiversityConfig(num_members=2, learning_rates=(1e-3,), baklava_steps=(200,))
    both = _train(wd, task, cfg, name="seeds", diversity=div, seeds=(0, 1), num_steps=20)
    alone = _train(wd, task, cfg, name="seed1", diversity=div, seeds=(1,), num_steps=20,
                   mode="separate", members=[1])
    a, b = load_member(both, 1, seed=1)[0], load_member(alone, 1, seed=1)[0]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-4), a, b)
    assert not np.allclose(load_member(both, 1, seed=0)[0]["reward_head"]["kernel"],
                           a["reward_head"]["kernel"]), "chain seeds trained the same member"
    t0, t1 = task.for_seed(0).preference_split("train"), task.for_seed(1).preference_split("train")
    same_pairs = {tuple(r) for r in np.concatenate([t0["chosen"], t0["rejected"]], 1)}
    swapped = sum(tuple(r) not in same_pairs for r in np.concatenate([t1["chosen"], t1["rejected"]], 1))
    assert 0.1 * len(t1["chosen"]) < swapped < 0.6 * len(t1["chosen"]), swapped  # fresh label draw
    for split in ("validation", "test"):
        np.testing.assert_array_equal(task.for_seed(0).preference_split(split)["chosen"],
                                      task.for_seed(1).preference_split(split)["chosen"])


def test_changed_config_stops_the_stage_naming_the_field(toy_init):
    from warm_jax.guards import StageConfigError
    wd, task, cfg = toy_init
    _train(wd, task, cfg, name="cfg", members=[0], num_steps=20)
    with pytest.raises(StageConfigError, match=r"num_steps: 20 -> 40.*remove .*rm/cfg"):
        _train(wd, task, cfg, name="cfg", members=[0], num_steps=40)


def test_bad_baklava_step_and_mode(toy_init):
    wd, task, cfg = toy_init
    with pytest.raises(ValueError, match=r"baklava_steps \[120\] are not SFT checkpoints \(have \[100, 150, 200\]\)"):
        _train(wd, task, cfg, name="bad", diversity=DiversityConfig(baklava_steps=(120,)))
    with pytest.raises(ValueError, match="RMConfig.mode='vmap': one of"):
        _train(wd, task, cfg, name="bad", mode="vmap")


def test_probe_ablation_members_start_from_their_sft_body_and_a_fresh_head_each(toy_init):
    from warm_jax.layout import RunLayout
    from warm_jax.models import RewardModel
    from warm_jax.rm.stage import fresh_head_params, member_init
    wd, _, cfg = toy_init
    sft_dir = RunLayout(wd).checkpoints(RunLayout(wd).sft)
    specs = expand(DiversityConfig(num_members=2, baklava_steps=(100, 200),
                                   explicit=((1e-3, 0.0, 100), (1e-3, 0.0, 200))), 200)
    inits = [flatten(member_init(fresh_head_params(RewardModel(cfg), s.rng_seed), sft_dir, s)) for s in specs]
    h0, h1 = (np.asarray(p["reward_head/kernel"]) for p in inits)
    assert not np.allclose(h0, h1), "each member draws its own head"
    assert 0.01 < h0.std() < 0.03, "the head's N(0, 0.02) init"
    np.testing.assert_array_equal(h0, flatten(fresh_head_params(RewardModel(cfg), specs[0].rng_seed))[
        "reward_head/kernel"])
    for init, s in zip(inits, specs):  # every body leaf is the member's own SFT checkpoint's
        body = flatten(restore_params(sft_dir, s.init_step)[0])
        shared = [k for k in init if k in body]
        assert len(shared) == len(init) - 1
        assert all(np.array_equal(init[k], body[k]) for k in shared)
