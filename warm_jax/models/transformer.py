"""A Llama-style decoder in Flax linen, with a language-model head (policy) and a scalar head (reward).

Every parameter carries logical axis names; `warm_jax.sharding` alone maps them to a mesh. Positions
come from the padding mask (`cumsum(mask) - 1`), so left- and right-padded batches give the same
outputs for their real tokens. Dropout takes its rate at call time because the rate is a WARM
diversity source and may be a traced, per-member value.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from warm_jax.models.config import ModelConfig
from warm_jax.sharding import constrain

Cache = list  # per layer: {"k": BxSxGxK, "v": BxSxGxK}
_NEG = -1e30


def _param(module: nn.Module, name: str, shape, axes, init, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def dropout(x: jax.Array, rate, rng: jax.Array) -> jax.Array:
    """Inverted dropout whose `rate` may be a traced scalar."""
    keep = jax.random.uniform(rng, x.shape) >= rate
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def positions_from_mask(mask_BxT: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


def last_token_index(mask_BxT: jax.Array) -> jax.Array:
    """Index of the last real (mask == 1) token of each row; works for left and right padding."""
    t_T = jnp.arange(mask_BxT.shape[-1])
    return jnp.max(jnp.where(mask_BxT.astype(bool), t_T, 0), axis=-1)


def rope(x_BxTxHxK: jax.Array, positions_BxT: jax.Array, theta: float) -> jax.Array:
    """Rotary embeddings, HF-Llama convention (rotate the two halves of each head)."""
    half = x_BxTxHxK.shape[-1] // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles_BxTx1xF = (positions_BxT.astype(jnp.float32)[..., None] * freqs)[:, :, None, :]
    sin, cos = jnp.sin(angles_BxTx1xF), jnp.cos(angles_BxTx1xF)
    x1, x2 = jnp.split(x_BxTxHxK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxHxK.dtype)


class RMSNorm(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        scale = _param(self, "scale", (x.shape[-1],), ("embed",), nn.initializers.ones,
                       self.cfg.jnp_param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.norm_eps)
        return (y * scale.astype(jnp.float32)).astype(self.cfg.jnp_dtype)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, positions_BxT, kv_valid_BxS, cache=None, cache_index=None):
        cfg = self.cfg
        D, H, G, K = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
        init = nn.initializers.normal(0.02)
        pd, dt = cfg.jnp_param_dtype, cfg.jnp_dtype
        wq = _param(self, "wq", (D, H, K), ("embed", "heads", "head_dim"), init, pd).astype(dt)
        wk = _param(self, "wk", (D, G, K), ("embed", "kv_heads", "head_dim"), init, pd).astype(dt)
        wv = _param(self, "wv", (D, G, K), ("embed", "kv_heads", "head_dim"), init, pd).astype(dt)
        wo = _param(self, "wo", (H, K, D), ("heads", "head_dim", "embed"), init, pd).astype(dt)

        q_BxTxHxK = rope(jnp.einsum("btd,dhk->bthk", x_BxTxD, wq), positions_BxT, cfg.rope_theta)
        k_BxTxGxK = rope(jnp.einsum("btd,dgk->btgk", x_BxTxD, wk), positions_BxT, cfg.rope_theta)
        v_BxTxGxK = jnp.einsum("btd,dgk->btgk", x_BxTxD, wv)
        q_BxTxHxK = constrain(q_BxTxHxK, ("batch", "length", "heads", "head_dim"))
        B, T = x_BxTxD.shape[:2]
        if cache is not None:  # write this chunk at [cache_index, cache_index + T)
            k_BxSxGxK = jax.lax.dynamic_update_slice(cache["k"], k_BxTxGxK.astype(cache["k"].dtype),
                                                     (0, cache_index, 0, 0))
            v_BxSxGxK = jax.lax.dynamic_update_slice(cache["v"], v_BxTxGxK.astype(cache["v"].dtype),
                                                     (0, cache_index, 0, 0))
            cache = {"k": k_BxSxGxK, "v": v_BxSxGxK}
            q_slot_T = cache_index + jnp.arange(T)
        else:
            k_BxSxGxK, v_BxSxGxK = k_BxTxGxK, v_BxTxGxK
            q_slot_T = jnp.arange(T)
        S = k_BxSxGxK.shape[1]
        allowed_BxTxS = (jnp.arange(S)[None, None, :] <= q_slot_T[None, :, None]) & \
            kv_valid_BxS.astype(bool)[:, None, :]

        q_BxTxGxRxK = q_BxTxHxK.reshape(B, T, G, H // G, K)
        logits = jnp.einsum("btgrk,bsgk->bgrts", q_BxTxGxRxK, k_BxSxGxK.astype(dt),
                            preferred_element_type=jnp.float32) * (K ** -0.5)
        logits = jnp.where(allowed_BxTxS[:, None, None], logits, _NEG)
        probs = jax.nn.softmax(logits, axis=-1).astype(dt)
        out_BxTxGxRxK = jnp.einsum("bgrts,bsgk->btgrk", probs, v_BxSxGxK.astype(dt))
        y_BxTxD = jnp.einsum("bthk,hkd->btd", out_BxTxGxRxK.reshape(B, T, H, K), wo)
        return constrain(y_BxTxD, ("batch", "length", "embed")), cache


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.cfg
        init = nn.initializers.normal(0.02)
        pd, dt = cfg.jnp_param_dtype, cfg.jnp_dtype
        wg = _param(self, "wg", (cfg.d_model, cfg.d_ff), ("embed", "mlp"), init, pd).astype(dt)
        wu = _param(self, "wu", (cfg.d_model, cfg.d_ff), ("embed", "mlp"), init, pd).astype(dt)
        wd = _param(self, "wd", (cfg.d_ff, cfg.d_model), ("mlp", "embed"), init, pd).astype(dt)
        h_BxTxF = jax.nn.silu(x_BxTxD @ wg) * (x_BxTxD @ wu)
        h_BxTxF = constrain(h_BxTxF, ("batch", "length", "mlp"))
        return h_BxTxF @ wd


class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, positions_BxT, kv_valid_BxS, cache, cache_index, dropout_rate,
                 deterministic):
        attn_out, cache = Attention(self.cfg, name="attn")(
            RMSNorm(self.cfg, name="attn_norm")(x_BxTxD), positions_BxT, kv_valid_BxS, cache,
            cache_index)
        if not deterministic:
            attn_out = dropout(attn_out, dropout_rate, self.make_rng("dropout"))
        h_BxTxD = x_BxTxD + attn_out
        mlp_out = MLP(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(h_BxTxD))
        if not deterministic:
            mlp_out = dropout(mlp_out, dropout_rate, self.make_rng("dropout"))
        return constrain(h_BxTxD + mlp_out, ("batch", "length", "embed")), cache


class Decoder(nn.Module):
    """Embedding, blocks and final norm: the body shared by policy, reward and value models."""
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embedding = _param(self, "embedding", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                                nn.initializers.normal(0.02), cfg.jnp_param_dtype)
        self.layers = [Block(cfg, name=f"layer_{i}") for i in range(cfg.n_layers)]
        self.final_norm = RMSNorm(cfg)

    def __call__(self, tokens_BxT, mask_BxT=None, *, positions_BxT=None, kv_valid_BxS=None,
                 cache: Cache | None = None, cache_index=None, dropout_rate=0.0,
                 deterministic: bool = True):
        if mask_BxT is None:
            mask_BxT = jnp.ones(tokens_BxT.shape, jnp.int32)
        if positions_BxT is None:
            positions_BxT = positions_from_mask(mask_BxT)
        if kv_valid_BxS is None:
            kv_valid_BxS = mask_BxT
        x_BxTxD = jnp.take(self.embedding, tokens_BxT, axis=0).astype(self.cfg.jnp_dtype)
        x_BxTxD = constrain(x_BxTxD, ("batch", "length", "embed"))
        # a zero-valued hook: gradients w.r.t. it are gradients w.r.t. the input embeddings
        x_BxTxD = self.perturb("embedded", x_BxTxD)
        new_cache = []
        for i, layer in enumerate(self.layers):
            x_BxTxD, c = layer(x_BxTxD, positions_BxT, kv_valid_BxS,
                               None if cache is None else cache[i], cache_index, dropout_rate,
                               deterministic)
            new_cache.append(c)
        return self.final_norm(x_BxTxD), (None if cache is None else new_cache)

    def attend(self, h_BxTxD):
        """Logits through the tied embedding matrix."""
        return jnp.einsum("btd,vd->btv", h_BxTxD, self.embedding.astype(h_BxTxD.dtype),
                          preferred_element_type=jnp.float32)


class LanguageModel(nn.Module):
    """Policy: body + LM head. `__call__` scores whole sequences; `decode` runs on a KV cache."""
    cfg: ModelConfig

    def setup(self):
        self.body = Decoder(self.cfg)
        if not self.cfg.tie_embeddings:
            self.lm_head = _param(self, "lm_head", (self.cfg.d_model, self.cfg.vocab_size),
                                  ("embed", "vocab"), nn.initializers.normal(0.02),
                                  self.cfg.jnp_param_dtype)

    def _logits(self, h_BxTxD):
        if self.cfg.tie_embeddings:
            logits = self.body.attend(h_BxTxD)
        else:
            logits = jnp.einsum("btd,dv->btv", h_BxTxD, self.lm_head.astype(h_BxTxD.dtype),
                                preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "length", "vocab"))

    def __call__(self, tokens_BxT, mask_BxT=None, *, dropout_rate=0.0, deterministic=True):
        h_BxTxD, _ = self.body(tokens_BxT, mask_BxT, dropout_rate=dropout_rate,
                               deterministic=deterministic)
        return self._logits(h_BxTxD)

    def decode(self, tokens_BxT, positions_BxT, kv_valid_BxS, cache: Cache, cache_index):
        h_BxTxD, cache = self.body(tokens_BxT, positions_BxT=positions_BxT,
                                   kv_valid_BxS=kv_valid_BxS, cache=cache, cache_index=cache_index)
        return self._logits(h_BxTxD), cache


class ScalarHead(nn.Module):
    """A linear map from the model dimension to one number (reward or value).

    The reward head has no bias: the Bradley–Terry loss only sees reward differences, so a bias gets
    no gradient but noise, which Adam would amplify into a random walk."""
    cfg: ModelConfig
    use_bias: bool = False

    @nn.compact
    def __call__(self, h_BxTxD):
        w = _param(self, "kernel", (self.cfg.d_model, 1), ("embed", "reward"),
                   nn.initializers.normal(0.02), self.cfg.jnp_param_dtype)
        out = jnp.einsum("btd,do->bto", h_BxTxD.astype(jnp.float32), w.astype(jnp.float32))
        if self.use_bias:
            b = _param(self, "bias", (1,), ("reward",), nn.initializers.zeros,
                       self.cfg.jnp_param_dtype)
            out = out + b.astype(jnp.float32)
        return out[..., 0]


class RewardModel(nn.Module):
    """Reward = scalar head on the body's state at the last real token of each sequence."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxT, mask_BxT, *, dropout_rate=0.0, deterministic=True):
        h_BxTxD, _ = Decoder(self.cfg, name="body")(tokens_BxT, mask_BxT,
                                                    dropout_rate=dropout_rate,
                                                    deterministic=deterministic)
        idx_B = last_token_index(mask_BxT)
        h_BxD = jnp.take_along_axis(h_BxTxD, idx_B[:, None, None], axis=1)
        return ScalarHead(self.cfg, name="reward_head")(h_BxD)[:, 0]


def init_cache(cfg: ModelConfig, batch: int, length: int) -> Cache:
    shape = (batch, length, cfg.n_kv_heads, cfg.resolved_head_dim)
    return [{"k": jnp.zeros(shape, cfg.jnp_dtype), "v": jnp.zeros(shape, cfg.jnp_dtype)}
            for _ in range(cfg.n_layers)]


def unbox(tree: Any) -> Any:
    return nn.meta.unbox(tree)
