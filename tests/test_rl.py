import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warm_jax.eval.metrics import (checkpoint_selection, gao_curve, gao_fit, pareto_front,
                                   win_rate)
from warm_jax.metrics import read_jsonl
from warm_jax.rl.bon import kl_bon
from warm_jax.rl.reinforce import (RLConfig, baseline_values, kl_per_token, make_rl,
                                   reinforce_loss, run_chunk)
from warm_jax.average.stage import AverageConfig
from warm_jax.rl.bon import BoNConfig
from warm_jax.rl.stage import PolicyConfig
from warm_jax.rm.stage import RMConfig


def test_unbiased_best_of_n_equals_brute_force_enumeration():
    from warm_jax.eval.evidence import bon_unbiased
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))   # no proxy ties
    got = bon_unbiased(proxy, gold, range(1, 8))
    for n in range(1, 8):
        for p in range(5):
            brute = [gold[p, list(sub)[int(np.argmax(proxy[p, list(sub)]))]]
                     for sub in itertools.combinations(range(7), n)]
            assert got[p, n - 1] == pytest.approx(np.mean(brute), abs=1e-12)
    assert kl_bon(1) == 0.0 and kl_bon(4) == pytest.approx(np.log(4) - 0.75)


def test_policy_gradient_matches_hand_computed_categorical_case():
    # π = softmax(θ) over 3 actions; one sample per action with advantages A
    theta = jnp.array([0.2, -0.1, 0.5])
    actions, adv = jnp.array([0, 2, 1]), jnp.array([1.0, -2.0, 0.5])

    def loss(t):
        logp = jax.nn.log_softmax(t)[actions][:, None]
        return reinforce_loss(logp, jnp.ones_like(logp), adv)
    g = jax.grad(loss)(theta)
    p = jax.nn.softmax(theta)
    # ∇θ log π(a) = e_a − p  ⇒  ∇L = −mean_b A_b (e_{a_b} − p)
    expect = -np.mean([a * (np.eye(3)[i] - p) for i, a in zip(np.asarray(actions), np.asarray(adv))], 0)
    np.testing.assert_allclose(g, expect, atol=1e-6)


def test_kl_estimators_and_baselines():
    lp, ref = jnp.array([[-1.0, -2.0]]), jnp.array([[-1.5, -1.0]])
    np.testing.assert_allclose(kl_per_token(lp, ref, "k1"), [[0.5, -1.0]])
    np.testing.assert_allclose(kl_per_token(lp, ref, "k2"), [[0.125, 0.5]])
    np.testing.assert_allclose(kl_per_token(lp, ref, "k3"), [[np.exp(-0.5) - 1 + 0.5, np.exp(1) - 2]],
                               rtol=1e-6)
    r = jnp.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    np.testing.assert_allclose(baseline_values(r, "loo", 3), [2.5, 2.0, 1.5, 25.0, 20.0, 15.0])
    np.testing.assert_allclose(baseline_values(r, "batch_mean", 1), np.full(6, 11.0))
    with pytest.raises(ValueError, match="baseline='loo' needs samples_per_prompt >= 2"):
        RLConfig(baseline="loo")
    with pytest.raises(ValueError, match="RLConfig.kl_estimator='k4'"):
        RLConfig(kl_estimator="k4")


def test_win_rate_of_identical_policies_is_half_within_ci():
    g = np.random.default_rng(1).normal(size=300)
    out = win_rate(g, g)
    assert out["win_rate"] == 0.5 and out["ci_low"] <= 0.5 <= out["ci_high"]
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=400), rng.normal(size=400)  # same distribution, different samples
    out = win_rate(a, b)
    assert out["ci_low"] <= 0.5 <= out["ci_high"] and out["ci_high"] - out["ci_low"] < 0.15
    assert win_rate(a + 10, b)["win_rate"] == 1.0


def test_pareto_selection_and_gao_fits():
    kl = [1.0, 2.0, 3.0, 2.5, 0.5]
    r = [0.2, 0.5, 0.4, 0.6, 0.2]
    assert pareto_front(kl, r) == [4, 1, 3]  # 0 ties 4 on reward at higher KL; 2 is beaten by 3
    sel = checkpoint_selection([10, 20, 30], proxy=[1.0, 2.0, 3.0], control=[0.5, 0.9, 0.1])
    assert sel["step_by_proxy"] == 30 and sel["step_best"] == 20 and sel["regret"] == pytest.approx(0.8)
    d = np.linspace(0.2, 3, 12)
    for form, true in (("bon", {"alpha": 1.5, "beta": 0.4}), ("rl", {"alpha": 0.8, "beta": 0.6})):
        y = gao_curve({"form": form, **true}, d)
        fit = gao_fit(d ** 2, y, form)
        assert fit["alpha"] == pytest.approx(true["alpha"], rel=1e-6)
        assert fit["beta"] == pytest.approx(true["beta"], rel=1e-6) and fit["r2"] > 0.999999


@pytest.fixture(scope="module")
def rl_setup(toy_init):
    from warm_jax.checkpoint import restore_params
    from warm_jax.models import RewardModel, SamplingConfig, unbox
    from warm_jax.checkpoint import assign_with_fallback
    wd, task, cfg = toy_init
    sft, _ = restore_params(os.path.join(wd, "sft", "checkpoints"))
    dummy = jnp.ones((1, 4), jnp.int32)
    value0, _ = assign_with_fallback(sft, unbox(RewardModel(cfg).init(jax.random.PRNGKey(0), dummy,
                                                                      dummy)["params"]))
    sampling = SamplingConfig(max_new_tokens=task.max_response_len, eos_id=task.eos_id)
    return task, cfg, sft, value0, sampling


def test_kl_is_zero_at_step_zero_and_rl_on_gold_raises_gold(rl_setup):
    task, cfg, sft, value0, sampling = rl_setup
    gold_reward = lambda p, pm, r, rm: task.gold_fn(p, r, rm)  # noqa: E731  the oracle as the RM
    rl = RLConfig(batch_size=64, learning_rate=1e-3, baseline="value")
    init, step = make_rl(model_cfg=cfg, cfg=rl, sampling=sampling, ref_params=sft,
                         reward_fn=gold_reward, prompts_NxP=jnp.asarray(task.prompts("rl")),
                         oracle=task.gold_fn)
    state = init(sft, value0, 0, 0.01)
    _, m0 = jax.jit(step)(state)
    assert float(m0["kl"]) == pytest.approx(0.0, abs=1e-5), "policy == reference at step 0"
    chunk = jax.jit(lambda s: run_chunk(step, s, 40))
    state, m1 = chunk(state)
    state, m2 = chunk(state)
    before, after = float(np.mean(m1["control_reward"][:10])), float(np.mean(m2["control_reward"][-10:]))
    assert after > before + 0.2, (before, after)


def test_rl_stage_resume_is_exact_and_alpha_sweep_is_one_program(toy_init, tmp_path):
    import shutil
    import signal
    from warm_jax import guards
    from warm_jax.average.stage import average_reward_models
    from warm_jax.rl.bon import best_of_n
    from warm_jax.rl.stage import train_policies
    from warm_jax.rm.diversity import DiversityConfig
    from warm_jax.rm.stage import train_reward_models
    wd, task, cfg = toy_init
    train_reward_models(workdir=wd, task=task, model_cfg=cfg,
                        cfg=RMConfig(name="rl", num_steps=20, batch_size=16, probe_steps=10,
                                     population_impl="map", seeds=(0, 1),
                                     diversity=DiversityConfig(num_members=2)))
    average_reward_models(workdir=wd, task=task, model_cfg=cfg,
                          cfg=AverageConfig(name="rl", m_values=(1, 2), greedy=False, lmc_pairs={},
                                            max_eval_pairs=200, seeds=(0, 1)))
    kw = dict(task=task, model_cfg=cfg, cfg=PolicyConfig(
        rm_name="rl", methods=("single", "ens"), alphas=(0.01, 0.1), seeds=(0, 1),
        rl=RLConfig(batch_size=16), num_steps=20, chunk=10, log_every=5, eval_prompts=32,
        ensemble_impl="map"))
    a = train_policies(workdir=wd, **kw)
    # a second work dir whose run gets SIGTERM during its first chunk: it saves after that chunk,
    # stops, and the rerun resumes from there
    wd2 = str(tmp_path / "wd2")
    shutil.copytree(wd, wd2, ignore=lambda d, names: ["rl"] if os.path.samefile(d, wd) else [])
    old = signal.getsignal(signal.SIGTERM)
    guards.install_preemption_handler()
    os.kill(os.getpid(), signal.SIGTERM)
    try:
        with pytest.raises(guards.Preempted, match="after saving step 10"):
            train_policies(workdir=wd2, **kw)
    finally:
        signal.signal(signal.SIGTERM, old)
        guards.clear_preemption()
    assert not os.path.exists(os.path.join(wd2, "rl", "rl", "single", "final.jsonl"))
    b = train_policies(workdir=wd2, **kw)
    for m in ("single", "ens"):
        fa = read_jsonl(os.path.join(a, m, "final.jsonl"))
        fb = read_jsonl(os.path.join(b, m, "final.jsonl"))
        assert [(r["run_alpha"], r["seed"]) for r in fa] == [(0.01, 0), (0.01, 1), (0.1, 0), (0.1, 1)]
        assert fa == fb, "resumed runs must end exactly where uninterrupted ones do"
        assert read_jsonl(os.path.join(a, m, "eval.jsonl")) == \
            read_jsonl(os.path.join(b, m, "eval.jsonl"))
        # each run is normalised against its own chain seed's reward models
        assert fa[0]["reward_shift"] == fa[2]["reward_shift"] != fa[1]["reward_shift"]
        rows = read_jsonl(os.path.join(a, m, "train.jsonl"))
        assert {r["run_alpha"] for r in rows} == {0.01, 0.1}
        assert [r["step"] for r in rows if r["run_alpha"] == 0.1 and r["seed"] == 1] == [5, 10, 15, 20]
        ev = read_jsonl(os.path.join(a, m, "eval.jsonl"))   # held out: steps 0, 10, 20 per run
        assert [r["step"] for r in ev if r["run_alpha"] == 0.1 and r["seed"] == 0] == [0, 10, 20]
        assert all(np.mean(r["gold_per_prompt"]) == pytest.approx(r["control_reward"], abs=1e-4)
                   for r in ev)
        assert {r["kl"] for r in ev if r["step"] == 0} == {0.0}, "step 0 is the SFT policy"
        assert all(np.isfinite(r["control_reward"]) for r in rows)
    out = best_of_n(workdir=wd, task=task, model_cfg=cfg,
                    cfg=BoNConfig(rm_name="rl", methods=("single",), n_prompts=16, N=8,
                                  seeds=(0, 1)))
    rows = read_jsonl(out)
    curve = [r for r in rows if "n" in r and r["seed"] == 1]
    assert [r["n"] for r in curve] == [1, 2, 4, 8]
    assert curve[0]["gold_gain"] == pytest.approx(0.0, abs=1e-5)
    auc = [r for r in rows if r.get("analysis") == "auc"]
    assert [(r["seed"], len(r["values"])) for r in auc] == [(0, 16), (1, 16)]


@pytest.mark.parametrize("kw, field, msg", [
    (dict(sweep_methods=("warm_M6",), sweep_alphas=(0.001, 0.01)), "sweep_methods",
     "names among methods"),
    (dict(sweep_methods=("single",)), "sweep_alphas", "when sweep_methods are given"),
    (dict(sweep_methods=("single",), sweep_alphas=(0.001, float("nan"))), "sweep_alphas",
     "finite numbers >= 0"),
    (dict(alphas=(0.01, 0.01)), "alphas", "distinct finite"),
    (dict(alphas=()), "alphas", "at least one"),
    (dict(alphas=(-1.0,)), "alphas", ">= 0"),
    (dict(num_steps=-5), "num_steps", "an integer >= 1"),
    (dict(num_steps=30, chunk=25), "num_steps", "a positive multiple of chunk=25"),
    (dict(seeds=()), "seeds", "at least one"),
    (dict(methods=("single", "warm")), "methods", "names in single | warm_M<k>")])
def test_rl_config_refuses_bad_values_naming_the_field(kw, field, msg):
    from warm_jax.checks import ConfigError
    with pytest.raises(ConfigError, match=msg) as e:
        PolicyConfig(**{"methods": ("single", "warm_M2"), **kw})
    assert (e.value.owner, e.value.field) == ("PolicyConfig", field)
