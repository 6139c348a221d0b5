"""A Llama-style decoder in Flax linen, with a language-model head (policy) and a scalar head (reward).

Every parameter carries logical axis names; `warm_jax.sharding` alone maps them to a mesh. Positions
come from the padding mask (`cumsum(mask) - 1`), so left- and right-padded batches give the same
outputs for their real tokens. Dropout takes its rate at call time because the rate is a WARM
diversity source and may be a traced, per-member value.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from warm_jax.models.config import ModelConfig
from warm_jax.sharding import constrain

Cache = list  # per layer: {"k": BxGxSxK, "v": BxGxSxK} (head-major: read without a transpose)
_NEG = -1e30


def _param(module: nn.Module, name: str, shape, axes, init, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def dropout(x: jax.Array, rate, rng: jax.Array, rows_B=None, length=None) -> jax.Array:
    """Inverted dropout whose `rate` may be a traced scalar. For a Bx1xD `x` holding position
    rows[b] of a length-`length` sequence, the mask is that row of the full sequence's mask, so the
    random stream is the same whether or not the other positions were computed."""
    if rows_B is None:
        keep = jax.random.uniform(rng, x.shape) >= rate
    else:
        keep_full = jax.random.uniform(rng, (x.shape[0], length) + x.shape[2:]) >= rate
        keep = jnp.take_along_axis(keep_full, rows_B[:, None, None], axis=1)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def first_argmax(x_BxV: jax.Array) -> jax.Array:
    """`jnp.argmax(x, -1)` (the first index of the maximum) as a max and a min over the indices that
    reach it: XLA:CPU's variadic (value, index) reduction is several times slower than two plain
    ones. Leading axes are batch."""
    V = x_BxV.shape[-1]
    at_max = x_BxV == x_BxV.max(axis=-1, keepdims=True)
    return jnp.where(at_max, jnp.arange(V), V).min(axis=-1)


def positions_from_mask(mask_BxT: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


def last_token_index(mask_BxT: jax.Array) -> jax.Array:
    """Index of the last real (mask == 1) token of each row; works for left and right padding."""
    t_T = jnp.arange(mask_BxT.shape[-1])
    return jnp.max(jnp.where(mask_BxT.astype(bool), t_T, 0), axis=-1)


def rope_frequencies(head_dim: int, theta: float, llama3: tuple | None = None) -> jax.Array:
    """The F = head_dim / 2 rotary frequencies; with `llama3` = (factor, low_freq_factor,
    high_freq_factor, original_max_position_embeddings), Llama 3.x's rescaling as transformers
    computes it: long wavelengths divided by the factor, short ones kept, a smooth blend between."""
    half = head_dim // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    if llama3 is None:
        return freqs
    factor, low, high, old = (float(x) for x in llama3)
    wavelen = 2 * jnp.pi / freqs
    scaled = jnp.where(wavelen > old / low, freqs / factor, freqs)
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return jnp.where(medium, blended, scaled)


def rope_tables(positions_BxT: jax.Array, head_dim: int, theta: float, llama3: tuple | None = None):
    """(sin, cos) of the rotary angles, Bx T x1xF with F = head_dim / 2: computed once per forward
    pass and shared by every layer (XLA:CPU evaluates sin/cos with scalar libm calls)."""
    freqs = rope_frequencies(head_dim, theta, llama3)
    angles_BxTx1xF = (positions_BxT.astype(jnp.float32)[..., None] * freqs)[:, :, None, :]
    return jnp.sin(angles_BxTx1xF), jnp.cos(angles_BxTx1xF)


def rope(x_BxTxHxK: jax.Array, sincos) -> jax.Array:
    """Rotary embeddings, HF-Llama convention (rotate the two halves of each head)."""
    sin, cos = sincos
    x1, x2 = jnp.split(x_BxTxHxK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxHxK.dtype)


class RMSNorm(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        plus_one = self.cfg.norm_plus_one   # Gemma: y * (1 + w), w from 0
        scale = _param(self, "scale", (x.shape[-1],), ("embed",),
                       nn.initializers.zeros if plus_one else nn.initializers.ones,
                       self.cfg.jnp_param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.norm_eps)
        scale32 = scale.astype(jnp.float32)
        return (y * (1.0 + scale32 if plus_one else scale32)).astype(self.cfg.jnp_dtype)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """Gemma 2's tanh soft-capping of logits to (-cap, cap); None: unchanged."""
    return x if cap is None else jnp.tanh(x / cap) * cap


def dense(x_BxTxD: jax.Array, w_DxF: jax.Array) -> jax.Array:
    """`x @ w` as one 2-D matmul over the flattened tokens. XLA:CPU runs a dot whose contraction
    spans (batch, length) -- the weight gradient of a 3-D einsum -- through a transposed copy of
    the activations; flattened, both gradients are plain 2-D matmuls (1.6x on a SwiGLU MLP)."""
    B, T, D = x_BxTxD.shape
    return (x_BxTxD.reshape(B * T, D) @ w_DxF).reshape(B, T, w_DxF.shape[-1])


def pick_rows(x_BxTxD: jax.Array, rows_B: jax.Array) -> jax.Array:
    """x[b, rows[b]] as Bx1xD: a select-and-sum rather than a gather, exact (one term is not zero),
    whose gradient is a select where a gather's is a scatter into a BxTxD buffer."""
    at_BxT = jnp.arange(x_BxTxD.shape[1]) == rows_B[:, None]
    return jnp.where(at_BxT.reshape(at_BxT.shape + (1,) * (x_BxTxD.ndim - 2)), x_BxTxD,
                     0).sum(1, keepdims=True)


class Attention(nn.Module):
    cfg: ModelConfig
    window: int | None = None   # attend over the `window` most recent positions only

    @nn.compact
    def __call__(self, x_BxTxD, sincos, kv_valid_BxS, cache=None, cache_index=None, rows_B=None):
        """`rows_B`: answer only the query at position rows[b] of each row (keys and values still
        come from every position): the output is Bx1xD."""
        cfg = self.cfg
        D, H, G, K = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
        R = H // G
        init = nn.initializers.normal(0.02)
        pd, dt = cfg.jnp_param_dtype, cfg.jnp_dtype
        wq = _param(self, "wq", (D, H, K), ("embed", "heads", "head_dim"), init, pd).astype(dt)
        wk = _param(self, "wk", (D, G, K), ("embed", "kv_heads", "head_dim"), init, pd).astype(dt)
        wv = _param(self, "wv", (D, G, K), ("embed", "kv_heads", "head_dim"), init, pd).astype(dt)
        wo = _param(self, "wo", (H, K, D), ("heads", "head_dim", "embed"), init, pd).astype(dt)

        if cfg.qkv_bias:   # Qwen2's q/k/v projections have biases (its output projection not)
            bq, bk, bv = (_param(self, n, shape, axes, nn.initializers.zeros, pd).astype(dt)
                          for n, shape, axes in (("bq", (H, K), ("heads", "head_dim")),
                                                 ("bk", (G, K), ("kv_heads", "head_dim")),
                                                 ("bv", (G, K), ("kv_heads", "head_dim"))))
        else:
            bq = bk = bv = None
        add = lambda y, b: y if b is None else y + b   # noqa: E731

        B, T = x_BxTxD.shape[:2]
        k_BxTxGxK = rope(add(dense(x_BxTxD, wk.reshape(D, G * K)).reshape(B, T, G, K), bk), sincos)
        v_BxTxGxK = add(dense(x_BxTxD, wv.reshape(D, G * K)).reshape(B, T, G, K), bv)
        if rows_B is not None:
            x_BxTxD, sincos = pick_rows(x_BxTxD, rows_B), tuple(pick_rows(t, rows_B) for t in sincos)
        Tq = x_BxTxD.shape[1]
        q_BxTxHxK = rope(add(dense(x_BxTxD, wq.reshape(D, H * K)).reshape(B, Tq, H, K), bq), sincos)
        q_BxTxHxK = constrain(q_BxTxHxK, ("batch", "length", "heads", "head_dim"))
        # head-major layouts, so that both attention products are batched (b, g) matmuls whose
        # rows are the R query heads of a group times Tq positions: M = R*Tq
        q_BxGxMxK = q_BxTxHxK.reshape(B, Tq, G, R, K).transpose(0, 2, 3, 1, 4).reshape(
            B, G, R * Tq, K)
        k_BxGxTxK = k_BxTxGxK.transpose(0, 2, 1, 3)
        v_BxGxTxK = v_BxTxGxK.transpose(0, 2, 1, 3)
        if cache is not None:  # write this chunk at [cache_index, cache_index + T)
            k_BxGxSxK = jax.lax.dynamic_update_slice(cache["k"], k_BxGxTxK.astype(cache["k"].dtype),
                                                     (0, 0, cache_index, 0))
            v_BxGxSxK = jax.lax.dynamic_update_slice(cache["v"], v_BxGxTxK.astype(cache["v"].dtype),
                                                     (0, 0, cache_index, 0))
            cache = {"k": k_BxGxSxK, "v": v_BxGxSxK}
            q_slot_BxT = (cache_index + jnp.arange(T))[None, :]
        else:
            k_BxGxSxK, v_BxGxSxK = k_BxGxTxK, v_BxGxTxK
            q_slot_BxT = jnp.arange(T)[None, :] if rows_B is None else rows_B[:, None]
        S = k_BxGxSxK.shape[2]
        allowed_BxTxS = (jnp.arange(S)[None, None, :] <= q_slot_BxT[:, :, None]) & \
            kv_valid_BxS.astype(bool)[:, None, :]
        if self.window is not None:   # slots, as transformers' sliding masks count indices
            allowed_BxTxS &= jnp.arange(S)[None, None, :] > q_slot_BxT[:, :, None] - self.window

        scale = (cfg.query_scale if cfg.query_scale is not None else K) ** -0.5
        logits = jnp.einsum("bgmk,bgsk->bgms", q_BxGxMxK, k_BxGxSxK.astype(dt),
                            preferred_element_type=jnp.float32).reshape(B, G, R, Tq, S) * scale
        logits = softcap(logits, cfg.attn_softcap)
        logits = jnp.where(allowed_BxTxS[:, None, None], logits, _NEG)
        probs_BxGxMxS = jax.nn.softmax(logits, axis=-1).astype(dt).reshape(B, G, R * Tq, S)
        out_BxGxMxK = jnp.einsum("bgms,bgsk->bgmk", probs_BxGxMxS, v_BxGxSxK.astype(dt))
        out_BxTxHK = out_BxGxMxK.reshape(B, G, R, Tq, K).transpose(0, 3, 1, 2, 4).reshape(
            B, Tq, H * K)
        y_BxTxD = dense(out_BxTxHK, wo.reshape(H * K, D))
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
        act = jax.nn.silu if cfg.mlp_act == "silu" else partial(jax.nn.gelu, approximate=True)
        h_BxTxF = act(dense(x_BxTxD, wg)) * dense(x_BxTxD, wu)
        h_BxTxF = constrain(h_BxTxF, ("batch", "length", "mlp"))
        return dense(h_BxTxF, wd)


class Block(nn.Module):
    cfg: ModelConfig
    window: int | None = None

    @nn.compact
    def __call__(self, x_BxTxD, sincos, kv_valid_BxS, cache, cache_index, dropout_rate,
                 deterministic, rows_B=None):
        """`rows_B`: compute the block's output at position rows[b] of each row only (Bx1xD)."""
        T = x_BxTxD.shape[1]
        attn_out, cache = Attention(self.cfg, self.window, name="attn")(
            RMSNorm(self.cfg, name="attn_norm")(x_BxTxD), sincos, kv_valid_BxS, cache,
            cache_index, rows_B)
        if self.cfg.post_norms:   # Gemma 2 normalises each branch's output too
            attn_out = RMSNorm(self.cfg, name="attn_post_norm")(attn_out)
        if rows_B is not None:
            x_BxTxD = pick_rows(x_BxTxD, rows_B)
        if not deterministic:
            attn_out = dropout(attn_out, dropout_rate, self.make_rng("dropout"), rows_B, T)
        h_BxTxD = x_BxTxD + attn_out
        mlp_out = MLP(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(h_BxTxD))
        if self.cfg.post_norms:
            mlp_out = RMSNorm(self.cfg, name="mlp_post_norm")(mlp_out)
        if not deterministic:
            mlp_out = dropout(mlp_out, dropout_rate, self.make_rng("dropout"), rows_B, T)
        return constrain(h_BxTxD + mlp_out, ("batch", "length", "embed")), cache


class Decoder(nn.Module):
    """Embedding, blocks and final norm: the body shared by policy, reward and value models.

    A slice of it, for reward models fine-tuned over cached trunk states (`warm_jax.rm.trunk`):
    `start` > 0 takes the states entering block `start` in place of tokens (no embedding);
    `stop` returns the states entering block `stop` (no final norm). Parameter names are the whole
    model's, so a slice's parameters are a subtree of the whole model's."""
    cfg: ModelConfig
    start: int = 0
    stop: int | None = None

    def setup(self):
        cfg = self.cfg
        if self.start == 0:
            self.embedding = _param(self, "embedding", (cfg.vocab_size, cfg.d_model),
                                    ("vocab", "embed"), nn.initializers.normal(0.02),
                                    cfg.jnp_param_dtype)
        stop = cfg.n_layers if self.stop is None else self.stop
        if not 0 <= self.start < stop <= cfg.n_layers:
            raise ValueError(f"Decoder blocks [{self.start}, {stop}): outside the model's "
                             f"[0, {cfg.n_layers})")
        self.layers = [Block(cfg, cfg.window(i), name=f"layer_{i}")
                       for i in range(self.start, stop)]
        self.final_norm = RMSNorm(cfg)

    def __call__(self, tokens_BxT, mask_BxT=None, *, positions_BxT=None, kv_valid_BxS=None,
                 cache: Cache | None = None, cache_index=None, dropout_rate=0.0,
                 deterministic: bool = True, rows_B=None):
        """`rows_B` (no cache): return only the final state at position rows[b] of each row, Bx1xD;
        the last layer then computes that position alone (its keys and values aside), which is all
        a reward model reads: a quarter of a 4-layer model's work less, with the same numbers."""
        if mask_BxT is None:
            mask_BxT = jnp.ones(tokens_BxT.shape, jnp.int32)
        if positions_BxT is None:
            positions_BxT = positions_from_mask(mask_BxT)
        if kv_valid_BxS is None:
            kv_valid_BxS = mask_BxT
        if self.start > 0:   # `tokens_BxT` are the BxTxD states entering block `start`
            x_BxTxD = constrain(tokens_BxT.astype(self.cfg.jnp_dtype), ("batch", "length", "embed"))
        else:
            x_BxTxD = jnp.take(self.embedding, tokens_BxT, axis=0)
            if self.cfg.embed_scale:   # Gemma: times sqrt(d_model), rounded to the weights' dtype
                x_BxTxD = x_BxTxD * jnp.asarray(self.cfg.d_model ** 0.5, x_BxTxD.dtype)
            x_BxTxD = x_BxTxD.astype(self.cfg.jnp_dtype)
            x_BxTxD = constrain(x_BxTxD, ("batch", "length", "embed"))
            # a zero-valued hook: gradients w.r.t. it are gradients w.r.t. the input embeddings
            x_BxTxD = self.perturb("embedded", x_BxTxD)
        sincos = rope_tables(positions_BxT, self.cfg.resolved_head_dim, self.cfg.rope_theta,
                             self.cfg.rope_llama3)
        new_cache = []
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1 and self.stop is None
            x_BxTxD, c = layer(x_BxTxD, sincos, kv_valid_BxS,
                               None if cache is None else cache[i], cache_index, dropout_rate,
                               deterministic, rows_B if last else None)
            new_cache.append(c)
        if self.stop is not None:
            return x_BxTxD, None
        return self.final_norm(x_BxTxD), (None if cache is None else new_cache)

    def attend(self, h_BxTxD):
        """Logits through the tied embedding matrix."""
        B, T, D = h_BxTxD.shape
        return jnp.einsum("nd,vd->nv", h_BxTxD.reshape(B * T, D),
                          self.embedding.astype(h_BxTxD.dtype),
                          preferred_element_type=jnp.float32).reshape(B, T, -1)


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
            B, T, D = h_BxTxD.shape
            logits = jnp.einsum("nd,dv->nv", h_BxTxD.reshape(B * T, D),
                                self.lm_head.astype(h_BxTxD.dtype),
                                preferred_element_type=jnp.float32).reshape(B, T, -1)
        return constrain(softcap(logits, self.cfg.final_softcap), ("batch", "length", "vocab"))

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
    """Reward = scalar head on the body's state at the last real token of each sequence.
    `input_layer` > 0: the inputs are the BxTxD states entering that block (cached trunk states),
    and the model holds only the blocks from there on (`Decoder.start`)."""
    cfg: ModelConfig
    input_layer: int = 0

    def dummy_inputs(self) -> tuple[jax.Array, jax.Array]:
        """(inputs, mask) of shape 1x4 to `init` the model with."""
        mask = jnp.ones((1, 4), jnp.int32)
        if self.input_layer == 0:
            return mask, mask
        return jnp.zeros((1, 4, self.cfg.d_model), self.cfg.jnp_dtype), mask

    @nn.compact
    def __call__(self, tokens_BxT, mask_BxT, *, dropout_rate=0.0, deterministic=True):
        body = Decoder(self.cfg, start=self.input_layer, name="body")
        h_Bx1xD, _ = body(tokens_BxT, mask_BxT, dropout_rate=dropout_rate,
                          deterministic=deterministic, rows_B=last_token_index(mask_BxT))
        return ScalarHead(self.cfg, name="reward_head")(h_Bx1xD)[:, 0]


def init_cache(cfg: ModelConfig, batch: int, length: int) -> Cache:
    shape = (batch, cfg.n_kv_heads, length, cfg.resolved_head_dim)
    return [{"k": jnp.zeros(shape, cfg.jnp_dtype), "v": jnp.zeros(shape, cfg.jnp_dtype)}
            for _ in range(cfg.n_layers)]


def unbox(tree: Any) -> Any:
    return nn.meta.unbox(tree)
