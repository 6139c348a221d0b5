"""Autoregressive sampling with a KV cache (and a full-recompute reference for tests and benchmarks).

Prompts may be padded on either side; they are left-aligned first so that the last prompt slot is a
real token for every row and every row writes the same cache slot at each step.
"""
from __future__ import annotations

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp

from warm_jax.checks import check_range
from warm_jax.models.transformer import LanguageModel, first_argmax, init_cache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. WARM samples RL rollouts at temperature 0.9 (Ramé et al. 2024, §5)."""
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0          # 0: off
    top_p: float = 1.0      # 1.0: off
    eos_id: int = 1
    pad_id: int = 0
    use_cache: bool = True

    def __post_init__(self):
        check_range("SamplingConfig", "max_new_tokens", self.max_new_tokens, 1)
        check_range("SamplingConfig", "temperature", self.temperature, 0.0, lo_open=True)
        check_range("SamplingConfig", "top_k", self.top_k, 0)
        check_range("SamplingConfig", "top_p", self.top_p, 0.0, 1.0, lo_open=True)


@flax.struct.dataclass
class Samples:
    tokens_BxN: jax.Array     # sampled response tokens (pad after EOS)
    logprobs_BxN: jax.Array   # log-prob of each token under the distribution it was drawn from
    mask_BxN: jax.Array       # 1 for response tokens up to and including EOS


def left_align(tokens_BxT: jax.Array, mask_BxT: jax.Array, pad_id: int):
    """Shift each row so its real tokens end at the last slot (same content, left padding)."""
    T = tokens_BxT.shape[1]
    n_B = mask_BxT.astype(jnp.int32).sum(-1)
    first_B = jnp.argmax(mask_BxT.astype(bool), axis=-1)  # first real slot
    src_BxT = (jnp.arange(T)[None, :] - (T - n_B)[:, None] + first_B[:, None]) % T
    keep_BxT = jnp.arange(T)[None, :] >= (T - n_B)[:, None]
    toks = jnp.where(keep_BxT, jnp.take_along_axis(tokens_BxT, src_BxT, axis=1), pad_id)
    return toks, keep_BxT.astype(jnp.int32)


def process_logits(logits_BxV: jax.Array, cfg: SamplingConfig, temperature=None) -> jax.Array:
    """Temperature, then top-k, then top-p; returns log-probabilities of the sampling distribution."""
    t = cfg.temperature if temperature is None else temperature
    logits_BxV = logits_BxV.astype(jnp.float32) / t
    if cfg.top_k:
        kth_Bx1 = jax.lax.top_k(logits_BxV, cfg.top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    if cfg.top_p < 1.0:
        sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass strictly above each token
        cutoff_Bx1 = jnp.min(jnp.where(before_BxV < cfg.top_p, sorted_BxV, jnp.inf), -1, keepdims=True)
        logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
    return jax.nn.log_softmax(logits_BxV, axis=-1)


def make_sampler(model: LanguageModel, cfg: SamplingConfig):
    """Returns `sample(params, prompt_BxP, prompt_mask_BxP, rng, temperature=None) -> Samples`."""
    N = cfg.max_new_tokens

    def choose(logits_BxV, rng, temperature):
        logp_BxV = process_logits(logits_BxV, cfg, temperature)
        # jax.random.categorical's Gumbel-max draw (same noise, same token), with a cheaper argmax
        tok_B = first_argmax(jax.random.gumbel(rng, logp_BxV.shape, logp_BxV.dtype) + logp_BxV)
        is_tok_BxV = jnp.arange(logp_BxV.shape[-1]) == tok_B[:, None]
        return tok_B, jnp.where(is_tok_BxV, logp_BxV, 0.0).sum(-1)

    def sample(params, prompt_BxP, prompt_mask_BxP, rng, temperature=None):
        prompt_BxP, pmask_BxP = left_align(prompt_BxP, prompt_mask_BxP, cfg.pad_id)
        B, P = prompt_BxP.shape
        S = P + N
        kv_valid_BxS = jnp.concatenate([pmask_BxP, jnp.zeros((B, N), jnp.int32)], axis=1)
        pos_B = pmask_BxP.sum(-1)
        if cfg.use_cache:
            cache = init_cache(model.cfg, B, S)
            logits_BxPxV, cache = model.apply({"params": params}, prompt_BxP, jnp.maximum(
                jnp.cumsum(pmask_BxP, -1) - 1, 0), kv_valid_BxS, cache, 0, method=model.decode)
            carry0 = (cache, logits_BxPxV[:, -1], kv_valid_BxS, pos_B,
                      jnp.zeros((B,), bool), rng)
        else:
            buf_BxS = jnp.concatenate([prompt_BxP, jnp.full((B, N), cfg.pad_id, prompt_BxP.dtype)], 1)
            logits0 = model.apply({"params": params}, prompt_BxP, pmask_BxP)[:, -1]
            carry0 = (buf_BxS, logits0, kv_valid_BxS, pos_B, jnp.zeros((B,), bool), rng)

        def step(carry, i):
            state, logits_BxV, valid_BxS, pos_B, done_B, rng = carry
            rng, key = jax.random.split(rng)
            tok_B, logp_B = choose(logits_BxV, key, temperature)
            live_B = ~done_B
            tok_B = jnp.where(live_B, tok_B, cfg.pad_id).astype(prompt_BxP.dtype)
            logp_B = jnp.where(live_B, logp_B, 0.0)
            slot = P + i
            valid_BxS = jax.lax.dynamic_update_slice(valid_BxS, live_B.astype(jnp.int32)[:, None],
                                                     (0, slot))
            if cfg.use_cache:
                logits_Bx1xV, state = model.apply({"params": params}, tok_B[:, None], pos_B[:, None], valid_BxS,
                                                  state, slot, method=model.decode)
                next_logits = logits_Bx1xV[:, 0]
            else:
                state = jax.lax.dynamic_update_slice(state, tok_B[:, None], (0, slot))
                logits_BxSxV = model.apply({"params": params}, state, valid_BxS)
                next_logits = jax.lax.dynamic_index_in_dim(logits_BxSxV, slot, 1, keepdims=False)
            done_B = done_B | (tok_B == cfg.eos_id)
            out = (tok_B, logp_B, live_B.astype(jnp.int32))
            return (state, next_logits, valid_BxS, pos_B + live_B, done_B, rng), out

        _, (toks_NxB, logp_NxB, mask_NxB) = jax.lax.scan(step, carry0, jnp.arange(N))
        return Samples(toks_NxB.T, logp_NxB.T, mask_NxB.T)

    return sample


@functools.lru_cache(maxsize=8)
def jitted_sampler(model_cfg, cfg: SamplingConfig):
    """`make_sampler` jitted once per (model config, sampling config) in a process: every stage and
    chain seed that samples with them reuses one compiled program."""
    return jax.jit(make_sampler(LanguageModel(model_cfg), cfg))
