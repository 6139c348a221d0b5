"""WARP's weight operations on hand-checkable vectors (warm_jax/rl/warp.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warm_jax.rl import warp


def _v(*x):
    return {"w": jnp.asarray(x, jnp.float32)}


def test_slerp_keeps_the_norm_of_equal_norm_vectors_and_follows_the_arc():
    a, b = _v(3.0, 0.0), _v(0.0, 3.0)   # Ω = π/2
    for lam in (0.0, 0.25, 0.5, 0.9, 1.0):
        out = np.asarray(warp.slerp(a, b, lam)["w"])
        np.testing.assert_allclose(np.linalg.norm(out), 3.0, rtol=1e-6)
        np.testing.assert_allclose(out, 3 * np.array([np.cos(lam * np.pi / 2),
                                                      np.sin(lam * np.pi / 2)]), atol=1e-6)
    # LERP of the same two vectors shrinks: the midpoint has norm 3/√2
    np.testing.assert_allclose(np.linalg.norm(warp.lerp(a, b, 0.5)["w"]), 3 / np.sqrt(2), rtol=1e-6)


def test_slerp_endpoints_and_identical_vectors():
    a, b = _v(1.0, 2.0, -1.0), _v(-0.5, 0.3, 2.0)
    np.testing.assert_allclose(warp.slerp(a, b, 0.0)["w"], a["w"], atol=1e-6)
    np.testing.assert_allclose(warp.slerp(a, b, 1.0)["w"], b["w"], atol=1e-6)
    np.testing.assert_allclose(warp.slerp(a, a, 0.3)["w"], a["w"], atol=1e-6)


@pytest.mark.parametrize("b", [(2.0, 4.0), (-1.0, -2.0), (0.0, 0.0)])
def test_collinear_or_zero_task_vectors_fall_back_to_lerp_without_nan(b):
    a, b = _v(1.0, 2.0), _v(*b)
    out = warp.slerp(a, b, 0.5)["w"]
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(out, 0.5 * (a["w"] + b["w"]), atol=1e-6)
    # and under jit, where both branches of the fallback are traced
    np.testing.assert_allclose(jax.jit(warp.slerp)(a, b, 0.5)["w"], out, atol=1e-6)


def test_slerp_many_iterates_with_one_over_m():
    # orthogonal norm-2 vectors: e1, e2 merge at λ = 1/2 to 2·(1, 1, 0)/√2 (norm kept); that, with
    # e3 at λ = 1/3, moves a third of the right angle: 2·(cos 30°·(1, 1, 0)/√2 + sin 30°·e3)
    d = [_v(2.0, 0, 0), _v(0, 2.0, 0), _v(0, 0, 2.0)]
    out = np.asarray(warp.slerp_many(d)["w"])
    c = np.cos(np.pi / 6) / np.sqrt(2)
    np.testing.assert_allclose(out, 2 * np.array([c, c, 0.5]), atol=1e-6)
    # with LERP the same rule is the plain average
    np.testing.assert_allclose(warp.lerp(warp.lerp(d[0], d[1], 0.5), d[2], 1 / 3)["w"],
                               np.full(3, 2 / 3), atol=1e-6)
    with pytest.raises(ValueError, match="no task vectors"):
        warp.slerp_many([])


def test_ema_update_matches_hand_computed_values():
    ema, params = _v(1.0, -2.0), _v(3.0, 2.0)
    out = warp.ema_update(ema, params, 0.01)["w"]
    np.testing.assert_allclose(out, [0.99 * 1 + 0.01 * 3, 0.99 * -2 + 0.01 * 2], rtol=1e-6)
    twice = warp.ema_update(warp.ema_update(ema, params, 0.5), params, 0.5)["w"]
    np.testing.assert_allclose(twice, [2.5, 1.0], rtol=1e-6)   # 1 → 2 → 2.5, −2 → 0 → 1


def test_liti_endpoints_and_merge_policies():
    init = {"w": jnp.zeros(2), "b": jnp.ones(1)}
    p1 = {"w": jnp.asarray([2.0, 0.0]), "b": jnp.asarray([1.0])}
    p2 = {"w": jnp.asarray([0.0, 2.0]), "b": jnp.asarray([1.0])}
    merged = warp.merge_policies([p1, p2], init)
    # w: SLERP of two orthogonal norm-2 vectors at λ = 1/2 keeps norm 2; b: both task vectors 0
    np.testing.assert_allclose(merged["w"], [np.sqrt(2), np.sqrt(2)], atol=1e-6)
    np.testing.assert_allclose(merged["b"], [1.0])
    np.testing.assert_allclose(warp.merge_policies([p1, p2], init, how="lerp")["w"], [1.0, 1.0])
    for eta, want in ((0.0, init), (1.0, merged)):
        got = warp.liti(init, merged, eta)
        for k in init:
            np.testing.assert_allclose(got[k], want[k], atol=1e-6)
    np.testing.assert_allclose(warp.liti(init, merged, 0.3)["w"], 0.3 * np.sqrt(2) * np.ones(2),
                               atol=1e-6)
    with pytest.raises(ValueError, match="allowed 'slerp', 'lerp'"):
        warp.merge_policies([p1], init, how="mean")


def _tiny_rl(warp_rl: bool):
    from warm_jax.models import LanguageModel, RewardModel, SamplingConfig, preset, unbox
    from warm_jax.rl.reinforce import RLConfig, make_rl
    cfg = preset("tiny")
    dummy = jnp.ones((1, 4), jnp.int32)
    policy = unbox(LanguageModel(cfg).init(jax.random.PRNGKey(0), dummy, dummy)["params"])
    value = unbox(RewardModel(cfg).init(jax.random.PRNGKey(1), dummy, dummy)["params"])
    prompts = jax.random.randint(jax.random.PRNGKey(2), (16, 4), 2, cfg.vocab_size)
    reward = lambda p, pm, r, rm: (r * rm).sum(-1) / jnp.maximum(rm.sum(-1), 1) / 10  # noqa: E731
    kw = dict(model_cfg=cfg, cfg=RLConfig(batch_size=8, learning_rate=1e-2, baseline="batch_mean"),
              sampling=SamplingConfig(max_new_tokens=6), ref_params=policy, prompts_NxP=prompts,
              reward_fn=reward)
    init, step = warp.make_warp_rl(**kw) if warp_rl else make_rl(**kw)
    return (lambda **k: init(policy, value, 0, 0.1, **k)), jax.jit(step), policy


def test_warp_rl_with_mu_0_is_plain_rl_and_mu_1_anchors_to_the_current_policy():
    plain_init, plain_step, init = _tiny_rl(warp_rl=False)
    warp_init, warp_step, _ = _tiny_rl(warp_rl=True)   # one program for every μ (μ is state)
    plain, frozen = plain_init(), warp_init(mu=0.0)  # μ = 0: the EMA stays the init = SFT anchor
    for _ in range(2):
        plain, m_plain = plain_step(plain)
        frozen, m_frozen = warp_step(frozen)
    for a, b in zip(jax.tree.leaves(plain.policy), jax.tree.leaves(frozen.rl.policy)):
        np.testing.assert_array_equal(a, b)
    assert float(m_plain["kl"]) == float(m_frozen["kl"]) != 0.0
    for a, b in zip(jax.tree.leaves(frozen.ema), jax.tree.leaves(init)):
        np.testing.assert_array_equal(a, b)
    # μ = 1/2: after one step the EMA is halfway between the init and the updated policy
    half, _ = warp_step(warp_init(mu=0.5))
    for e, p, i in zip(*(jax.tree.leaves(t) for t in (half.ema, half.rl.policy, init))):
        np.testing.assert_allclose(e, 0.5 * i + 0.5 * p, rtol=1e-6, atol=1e-7)
    # μ = 1: the anchor is the policy that samples, so the next step's KL estimate is ~0
    tracking, _ = warp_step(warp_init(mu=1.0))
    _, m = warp_step(tracking)
    assert abs(float(m["kl"])) < 1e-4
    with pytest.raises(ValueError, match="mu=1.5 out of range"):
        warp_init(mu=1.5)
