"""REINFORCE with a baseline against r(x, y) − α·KL(π ‖ π_SFT), in pure JAX.

One step samples responses with the KV-cache sampler, scores them with any `RewardFunction`
(single RM, WARM, ENS, WCO, UWO) and, where the task has one, with the oracle (control reward),
and updates the policy (and a learned value baseline). `make_rl(...)` returns pure functions over an
explicit `RLState`; the seed and α live in the state, so several seeds and α values of one method
run as one vmapped program (`jax.vmap(run_chunk)`) and share one compilation. The reward function may be
passed to `step` instead of `make_rl` (a pytree: one per run, vmapped with the states), so that the
chain seeds' reward models, each run its own, share that program too.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp

from warm_jax.models import LanguageModel, ModelConfig, RewardModel, SamplingConfig, make_sampler
from warm_jax.checks import check_range
from warm_jax.train import OptimConfig, make_optimizer

KL_ESTIMATORS = ("k1", "k2", "k3")
BASELINES = ("value", "batch_mean", "loo")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """WARM §5 used batch 128, lr 1e-5, temperature 0.9 and α ∈ {0.01, 0.003, 0.001} for a large
    LM; the toy defaults are scaled to a ~80k-parameter policy."""
    batch_size: int = 64
    samples_per_prompt: int = 1      # > 1 for the leave-one-out baseline
    learning_rate: float = 3e-4
    value_learning_rate: float = 3e-3
    temperature: float = 0.9
    kl_estimator: str = "k1"         # Schulman's k1 / k2 / k3 per-token estimators
    baseline: str = "value"          # learned value head (the paper's) | batch_mean | loo
    adaptive_kl_target: float | None = None  # if set, α follows a proportional controller
    adaptive_kl_rate: float = 0.1

    def __post_init__(self):
        o = "RLConfig"
        check_range(o, "batch_size", self.batch_size, 1)
        check_range(o, "samples_per_prompt", self.samples_per_prompt, 1, self.batch_size)
        if self.batch_size % self.samples_per_prompt:
            raise ValueError(f"{o}.batch_size={self.batch_size} must be a multiple of "
                             f"samples_per_prompt={self.samples_per_prompt}")
        check_range(o, "learning_rate", self.learning_rate, 0.0, 1.0, lo_open=True)
        check_range(o, "value_learning_rate", self.value_learning_rate, 0.0, 1.0, lo_open=True)
        check_range(o, "temperature", self.temperature, 0.0, 10.0, lo_open=True)
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"{o}.kl_estimator={self.kl_estimator!r}: allowed {KL_ESTIMATORS}")
        if self.baseline not in BASELINES:
            raise ValueError(f"{o}.baseline={self.baseline!r}: allowed {BASELINES}")
        if self.baseline == "loo" and self.samples_per_prompt < 2:
            raise ValueError(f"{o}.baseline='loo' needs samples_per_prompt >= 2")


@flax.struct.dataclass
class RLState:
    step: jax.Array
    policy: Any
    policy_opt: Any
    value: Any
    value_opt: Any
    alpha: jax.Array
    rng: jax.Array


def kl_per_token(logp_BxN: jax.Array, ref_logp_BxN: jax.Array, estimator: str) -> jax.Array:
    """Per-token estimators of KL(π‖π_ref) from samples of π (Schulman 2020)."""
    log_ratio = logp_BxN - ref_logp_BxN
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio ** 2
    return jnp.exp(-log_ratio) - 1.0 + log_ratio  # k3


def reinforce_loss(logp_BxN: jax.Array, mask_BxN: jax.Array, advantage_B: jax.Array) -> jax.Array:
    """−mean_b A_b · Σ_t log π(y_bt); its gradient is the REINFORCE estimate."""
    return -jnp.mean(jax.lax.stop_gradient(advantage_B) * (logp_BxN * mask_BxN).sum(-1))


def baseline_values(returns_B: jax.Array, kind: str, samples_per_prompt: int) -> jax.Array:
    if kind == "batch_mean":
        return jnp.full_like(returns_B, returns_B.mean())
    k = samples_per_prompt  # leave-one-out over the k samples of the same prompt
    r_PxK = returns_B.reshape(-1, k)
    return ((r_PxK.sum(-1, keepdims=True) - r_PxK) / (k - 1)).reshape(-1)


def make_rl(*, model_cfg: ModelConfig, cfg: RLConfig, sampling: SamplingConfig,
            ref_params: Any, prompts_NxP: jax.Array, reward_fn: Any = None,
            oracle: Callable | None = None):
    """Returns (init_state(policy, value, seed, alpha), step(state[, reward_fn[, anchor]]) ->
    (state, metrics)); `step` scores with its `reward_fn` argument, else with `make_rl`'s, and
    takes its KL to `anchor` where given, else to `ref_params`."""
    lm, vm = LanguageModel(model_cfg), RewardModel(model_cfg)
    sampler = make_sampler(lm, dataclasses.replace(sampling, temperature=cfg.temperature))
    tx_pi = make_optimizer(OptimConfig(learning_rate=cfg.learning_rate))
    tx_v = make_optimizer(OptimConfig(learning_rate=cfg.value_learning_rate))
    T = cfg.temperature
    P_prompts = cfg.batch_size // cfg.samples_per_prompt

    def init_state(policy, value, seed, alpha) -> RLState:
        return RLState(step=jnp.zeros((), jnp.int32), policy=policy, policy_opt=tx_pi.init(policy),
                       value=value, value_opt=tx_v.init(value), alpha=jnp.float32(alpha),
                       rng=jax.random.PRNGKey(seed))

    def logprobs_and_entropy(params, prompt, resp, rmask):
        tokens = jnp.concatenate([prompt, resp], 1)
        mask = jnp.concatenate([jnp.ones_like(prompt), rmask], 1)
        logits = lm.apply({"params": params}, tokens, mask)[:, prompt.shape[1] - 1:-1] / T
        logp_all = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        logp = jnp.take_along_axis(logp_all, resp[..., None], -1)[..., 0] * rmask
        entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
        return logp, entropy

    def step(state: RLState, step_reward_fn: Any = None, anchor: Any = None):
        """One RL step; `anchor` (WARP's EMA of the policy) replaces `ref_params` in the KL."""
        score = step_reward_fn if step_reward_fn is not None else reward_fn
        ref = ref_params if anchor is None else anchor
        rng, k_idx, k_sample = jax.random.split(state.rng, 3)
        idx = jax.random.randint(k_idx, (P_prompts,), 0, prompts_NxP.shape[0])
        prompt = jnp.repeat(prompts_NxP[idx], cfg.samples_per_prompt, axis=0)
        pmask = jnp.ones_like(prompt)
        out = sampler(state.policy, prompt, pmask, k_sample)
        resp, rmask = out.tokens_BxN, out.mask_BxN
        ref_logp, _ = logprobs_and_entropy(ref, prompt, resp, rmask)
        kl_B = (kl_per_token(out.logprobs_BxN, ref_logp, cfg.kl_estimator) * rmask).sum(-1)
        proxy_B = score(prompt, pmask, resp, rmask)
        returns_B = proxy_B - state.alpha * kl_B

        def value_loss(v):
            v_B = vm.apply({"params": v}, prompt, pmask)  # V(x): the value of the prompt
            return jnp.mean((v_B - returns_B) ** 2), v_B

        (v_loss, v_B), v_grads = jax.value_and_grad(value_loss, has_aux=True)(state.value)
        baseline_B = v_B if cfg.baseline == "value" else baseline_values(
            returns_B, cfg.baseline, cfg.samples_per_prompt)
        advantage_B = returns_B - baseline_B

        def policy_loss(p):
            logp, entropy = logprobs_and_entropy(p, prompt, resp, rmask)
            return reinforce_loss(logp, rmask, advantage_B), entropy

        (pg_loss, entropy), pi_grads = jax.value_and_grad(policy_loss, has_aux=True)(state.policy)
        upd, policy_opt = tx_pi.update(pi_grads, state.policy_opt, state.policy)
        policy = jax.tree.map(jnp.add, state.policy, upd)
        vupd, value_opt = tx_v.update(v_grads, state.value_opt, state.value)
        value = jax.tree.map(jnp.add, state.value, vupd)
        kl_mean = kl_B.mean()
        alpha = state.alpha
        if cfg.adaptive_kl_target is not None:  # proportional controller (Ziegler et al. 2019)
            err = jnp.clip(kl_mean / cfg.adaptive_kl_target - 1.0, -0.2, 0.2)
            alpha = alpha * (1.0 + cfg.adaptive_kl_rate * err)
        n_tok = jnp.maximum(rmask.sum(), 1)
        metrics = {"proxy_reward": proxy_B.mean(), "kl": kl_mean, "alpha": state.alpha,
                   "entropy": (entropy * rmask).sum() / n_tok,
                   "length": rmask.sum(-1).astype(jnp.float32).mean(),
                   "value_loss": v_loss, "pg_loss": pg_loss, "return": returns_B.mean(),
                   "sample_tokens": resp[:2], "sample_mask": rmask[:2], "sample_prompts": prompt[:2]}
        if oracle is not None:
            metrics["control_reward"] = oracle(prompt, resp, rmask).mean()
        new = RLState(step=state.step + 1, policy=policy, policy_opt=policy_opt, value=value,
                      value_opt=value_opt, alpha=alpha, rng=rng)
        return new, metrics

    return init_state, step


def run_chunk(step: Callable, state: RLState, num_steps: int, reward_fn: Any = None):
    """`num_steps` RL steps in one `lax.scan`; metrics stacked along a leading step axis."""
    return jax.lax.scan(lambda s, _: step(s, reward_fn), state, None, length=num_steps)
