"""Losses shared by the stages: next-token cross-entropy (pretrain, SFT)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from warm_jax.models.transformer import LanguageModel, first_argmax


def token_logprobs(logits_BxTxV: jax.Array, tokens_BxT: jax.Array) -> jax.Array:
    """log p(tokens[t+1] | tokens[..t]) for t < T-1, shape BxT-1.

    The target's logit minus the log-partition, the target picked by a select-and-sum (exact): no
    BxTxV log-softmax is materialised, and the gradient holds no scatter."""
    logits_BxTxV = logits_BxTxV[:, :-1].astype(jnp.float32)
    is_target_BxTxV = jnp.arange(logits_BxTxV.shape[-1]) == tokens_BxT[:, 1:, None]
    target_BxT = jnp.where(is_target_BxTxV, logits_BxTxV, 0.0).sum(-1)
    return target_BxT - jax.nn.logsumexp(logits_BxTxV, axis=-1)


def make_lm_loss(model: LanguageModel, dropout_rate: float = 0.0):
    """Cross-entropy on the tokens where `loss_mask` is 1 (the response, for SFT; all, for pretraining).

    batch: tokens_BxT, mask_BxT (padding), loss_mask_BxT.
    """
    def loss_fn(params, batch, rng):
        logits_BxTxV = model.apply({"params": params}, batch["tokens"], batch["mask"],
                                   dropout_rate=dropout_rate, deterministic=dropout_rate == 0.0,
                                   rngs={"dropout": rng})
        logp_BxT1 = token_logprobs(logits_BxTxV, batch["tokens"])
        w_BxT1 = (batch["loss_mask"][:, 1:] * batch["mask"][:, 1:]).astype(jnp.float32)
        n = jnp.maximum(w_BxT1.sum(), 1.0)
        loss = -(logp_BxT1 * w_BxT1).sum() / n
        correct = first_argmax(logits_BxTxV[:, :-1]) == batch["tokens"][:, 1:]
        return loss, {"token_accuracy": (correct * w_BxT1).sum() / n}
    return loss_fn


def response_logprobs(model: LanguageModel, params, prompt_BxP, response_BxR, mask_BxR,
                      temperature: float = 1.0) -> jax.Array:
    """log π(response_t | prompt, response_<t) for each response token (0 where masked), BxR."""
    P = prompt_BxP.shape[1]
    tokens = jnp.concatenate([prompt_BxP, response_BxR], axis=1)
    mask = jnp.concatenate([jnp.ones_like(prompt_BxP), mask_BxR.astype(prompt_BxP.dtype)], axis=1)
    logits = model.apply({"params": params}, tokens, mask) / temperature
    return token_logprobs(logits, tokens)[:, P - 1:] * mask_BxR
