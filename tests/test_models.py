import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warm_jax.models import (LanguageModel, ModelConfig, RewardModel, SamplingConfig, init_cache,
                             make_sampler, preset, unbox)
from warm_jax.models.sampling import left_align, process_logits

CFG = preset("tiny")
# Gemma 2's changes on the tiny shapes: a 3-token window on layer 0 that bites on 12 tokens
GEMMA = CFG.replace(norm_plus_one=True, post_norms=True, mlp_act="gelu_tanh", embed_scale=True,
                    query_scale=12.0, attn_softcap=2.0, final_softcap=3.0, layer_windows=(3, None))


def _params(model, T=10, seed=0):
    toks = jnp.ones((2, T), jnp.int32)
    return unbox(model.init(jax.random.PRNGKey(seed), toks, jnp.ones_like(toks))["params"])


def _tokens(B=3, T=10, seed=1):
    return jax.random.randint(jax.random.PRNGKey(seed), (B, T), 4, CFG.vocab_size)


def test_causality_gradients_after_t_are_exactly_zero():
    lm = LanguageModel(CFG)
    params = _params(lm)
    toks = _tokens(1, 10)
    variables = lm.init(jax.random.PRNGKey(0), toks)
    perturb = variables["perturbations"]
    t = 4

    def out_at_t(perturbations):
        logits = lm.apply({"params": params, "perturbations": perturbations}, toks)
        return logits[0, t].sum()

    g = jax.grad(out_at_t)(perturb)["body"]["embedded"][0]  # TxD
    assert np.all(np.asarray(g[t + 1:]) == 0.0), "position t depends on later inputs"
    assert np.any(np.asarray(g[: t + 1]) != 0.0), "gradient vanished before t too: test is vacuous"


@pytest.mark.parametrize("cfg", [CFG, GEMMA], ids=["llama", "gemma2"])
def test_kv_cache_decode_equals_full_recompute(cfg):
    lm = LanguageModel(cfg)
    params = _params(lm)
    if cfg.norm_plus_one:   # its norms start at w = 0: move them, so that (1 + w) is tested
        params = jax.tree_util.tree_map_with_path(
            lambda p, x: x + 0.3 if "norm" in jax.tree_util.keystr(p) else x, params)
    toks = _tokens(2, 12)
    full = lm.apply({"params": params}, toks)
    P = 5
    cache = init_cache(cfg, 2, 12)
    valid = jnp.ones((2, 12), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
    logits, cache = lm.apply({"params": params}, toks[:, :P], pos[:, :P], valid, cache, 0,
                             method=lm.decode)
    outs = [logits]
    for i in range(P, 12):
        lg, cache = lm.apply({"params": params}, toks[:, i:i + 1], pos[:, i:i + 1], valid, cache, i,
                             method=lm.decode)
        outs.append(lg)
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5)


def test_sampler_cache_and_recompute_agree_and_respect_eos():
    cfg = CFG
    lm = LanguageModel(cfg)
    params = _params(lm)
    toks = _tokens(4, 7)
    mask = jnp.array([[1] * 7, [0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], [1] * 7])
    outs = []
    for use_cache in (True, False):
        sc = SamplingConfig(max_new_tokens=10, temperature=1.3, eos_id=5, use_cache=use_cache)
        outs.append(jax.jit(make_sampler(lm, sc))(params, toks, mask, jax.random.PRNGKey(7)))
    a, b = outs
    np.testing.assert_array_equal(a.tokens_BxN, b.tokens_BxN)
    np.testing.assert_allclose(a.logprobs_BxN, b.logprobs_BxN, atol=1e-5)
    for row_t, row_m in zip(np.asarray(a.tokens_BxN), np.asarray(a.mask_BxN)):
        n = row_m.sum()
        assert np.all(row_m[:n] == 1) and np.all(row_m[n:] == 0)
        eos = np.where(row_t[:n] == 5)[0]
        if len(eos):
            assert eos[0] == n - 1, "generation must stop right after EOS"
        assert np.all(row_t[n:] == 0), "pad after the response"


def test_sampler_logprobs_match_rescoring_under_temperature():
    lm = LanguageModel(CFG)
    params = _params(lm)
    prompt = _tokens(2, 5)
    sc = SamplingConfig(max_new_tokens=6, temperature=0.7, eos_id=-1)
    out = make_sampler(lm, sc)(params, prompt, jnp.ones_like(prompt), jax.random.PRNGKey(0))
    seq = jnp.concatenate([prompt, out.tokens_BxN], 1)
    logits = lm.apply({"params": params}, seq)[:, 4:-1] / 0.7
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), out.tokens_BxN[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs_BxN, lp, atol=1e-4)


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept_k = np.isfinite(process_logits(logits, SamplingConfig(top_k=2)))[0]
    np.testing.assert_array_equal(kept_k, [True, True, False, False])
    kept_p = np.isfinite(process_logits(logits, SamplingConfig(top_p=0.7)))[0]
    np.testing.assert_array_equal(kept_p, [True, True, False, False])  # 0.5 < 0.7 -> need 0.3 too
    kept_p2 = np.isfinite(process_logits(logits, SamplingConfig(top_p=0.5)))[0]
    np.testing.assert_array_equal(kept_p2, [True, False, False, False])


def test_padding_invariance_rewards_and_logits():
    rm, lm = RewardModel(CFG), LanguageModel(CFG)
    rparams, lparams = _params(rm), _params(lm)
    toks = _tokens(3, 10)
    right = jnp.array([[1] * 10, [1] * 6 + [0] * 4, [1] * 3 + [0] * 7])
    ltoks, left = left_align(toks, right, pad_id=0)
    r_right = rm.apply({"params": rparams}, toks, right)
    r_left = rm.apply({"params": rparams}, ltoks, left)
    np.testing.assert_allclose(r_right, r_left, atol=1e-5)
    assert np.ptp(np.asarray(r_right)) > 0, "rewards identical across rows: test is vacuous"
    lg_right = lm.apply({"params": lparams}, toks, right)
    lg_left = lm.apply({"params": lparams}, ltoks, left)
    for b, n in enumerate([10, 6, 3]):
        np.testing.assert_allclose(lg_right[b, :n], lg_left[b, 10 - n:], atol=1e-5)


def test_reward_and_policy_share_the_body_tree():
    rp, lp = _params(RewardModel(CFG)), _params(LanguageModel(CFG))
    assert jax.tree.structure(rp["body"]) == jax.tree.structure(lp["body"])
    assert set(rp) == {"body", "reward_head"}


def test_untied_head_and_gqa_shapes():
    cfg = CFG.replace(tie_embeddings=False, n_heads=4, n_kv_heads=1)
    p = _params(LanguageModel(cfg))
    assert p["lm_head"].shape == (cfg.d_model, cfg.vocab_size)
    assert p["body"]["layer_0"]["attn"]["wk"].shape == (cfg.d_model, 1, cfg.resolved_head_dim)
    n = sum(x.size for x in jax.tree.leaves(p))
    assert n == cfg.num_params()


@pytest.mark.parametrize("kw, msg", [
    (dict(n_kv_heads=3), "n_heads=4 must be a multiple of n_kv_heads=3"),
    (dict(n_kv_heads=8), "ModelConfig.n_kv_heads=8 is out of range: allowed [1, 4]"),
    (dict(d_model=30), "ModelConfig.d_model=30 must be divisible by n_heads=4"),
    (dict(vocab_size=0), "ModelConfig.vocab_size=0 is out of range: allowed [1, inf]"),
    (dict(dtype="int8"), "ModelConfig.dtype='int8'"),
])
def test_invalid_model_config_messages(kw, msg):
    with pytest.raises(ValueError) as e:
        ModelConfig(**kw)
    assert msg in str(e.value)


def test_invalid_sampling_and_preset():
    with pytest.raises(ValueError, match=r"SamplingConfig.temperature=0.0 is out of range: allowed \(0.0"):
        SamplingConfig(temperature=0.0)
    with pytest.raises(ValueError, match=r"SamplingConfig.top_p=1.5"):
        SamplingConfig(top_p=1.5)
    with pytest.raises(ValueError, match="model preset 'huge' unknown"):
        preset("huge")
