"""Typed, validated model configuration with presets from `tiny` (CPU tests) to ~1B."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from warm_jax.checks import check_range

_DTYPES = ("float32", "bfloat16", "float16")


MLP_ACTS = ("silu", "gelu_tanh")


def _gemma(default):
    return dataclasses.field(default=default, metadata={"record_if_set": True})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Llama-style decoder: RMSNorm, rotary embeddings, SwiGLU MLP, grouped-query attention;
    Qwen2's biases, Llama 3's rotary rescaling and Gemma 2's changes where set."""
    vocab_size: int = 64
    d_model: int = 32
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int | None = None  # default d_model // n_heads
    d_ff: int = 64
    max_len: int = 128
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dtype: str = "float32"        # activation dtype
    param_dtype: str = "float32"
    # added for Hugging Face families after runs were recorded: written into a stage's recorded
    # configuration only when set (`layout.canonical`), so those records still match
    qkv_bias: bool = dataclasses.field(default=False, metadata={"record_if_set": True})  # Qwen2
    # Llama 3.x's rotary rescaling: (factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings); None for plain rotary embeddings
    rope_llama3: tuple | None = dataclasses.field(default=None, metadata={"record_if_set": True})
    # Gemma 2: RMSNorm scales by (1 + w) (w starts at 0), norms after attention and the MLP as
    # well as before, GeGLU (tanh-approximated GELU), embeddings times sqrt(d_model), queries
    # scaled by query_scale ** -0.5, tanh soft-capping of attention and final logits, and per-layer
    # attention windows (None: every position; k: the k most recent positions)
    norm_plus_one: bool = _gemma(False)
    post_norms: bool = _gemma(False)
    mlp_act: str = _gemma("silu")
    embed_scale: bool = _gemma(False)
    query_scale: float | None = _gemma(None)
    attn_softcap: float | None = _gemma(None)
    final_softcap: float | None = _gemma(None)
    layer_windows: tuple | None = _gemma(None)

    def __post_init__(self):
        o = "ModelConfig"
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_len"):
            check_range(o, f, getattr(self, f), 1)
        if self.head_dim is not None:
            check_range(o, "head_dim", self.head_dim, 1)
        elif self.d_model % self.n_heads:
            raise ValueError(f"{o}.d_model={self.d_model} must be divisible by n_heads={self.n_heads} "
                             "(or set head_dim)")
        check_range(o, "n_kv_heads", self.n_kv_heads, 1, self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{o}.n_heads={self.n_heads} must be a multiple of "
                             f"n_kv_heads={self.n_kv_heads} (grouped-query attention)")
        if self.resolved_head_dim % 2:
            raise ValueError(f"{o}.head_dim={self.resolved_head_dim} must be even (rotary embeddings)")
        check_range(o, "rope_theta", self.rope_theta, 0.0, lo_open=True)
        check_range(o, "norm_eps", self.norm_eps, 0.0, 1.0, lo_open=True)
        for f in ("dtype", "param_dtype"):
            if getattr(self, f) not in _DTYPES:
                raise ValueError(f"{o}.{f}={getattr(self, f)!r}: allowed {_DTYPES}")
        if self.rope_llama3 is not None:
            factor, low, high, old = (float(x) for x in self.rope_llama3)
            if not (factor >= 1 and 0 < low < high and old >= 1):
                raise ValueError(f"{o}.rope_llama3={self.rope_llama3!r}: want (factor >= 1, "
                                 "0 < low_freq_factor < high_freq_factor, "
                                 "original_max_position_embeddings >= 1)")

        if self.mlp_act not in MLP_ACTS:
            raise ValueError(f"{o}.mlp_act={self.mlp_act!r}: allowed {MLP_ACTS}")
        for f in ("query_scale", "attn_softcap", "final_softcap"):
            if getattr(self, f) is not None:
                check_range(o, f, getattr(self, f), 0.0, lo_open=True)
        if self.layer_windows is not None:
            w = tuple(self.layer_windows)
            if len(w) != self.n_layers or any(x is not None and (isinstance(x, bool) or
                                                                 int(x) != x or x < 1) for x in w):
                raise ValueError(f"{o}.layer_windows={self.layer_windows!r}: one entry per layer "
                                 f"({self.n_layers}), each None or an integer >= 1")

    def window(self, layer: int) -> int | None:
        """How many of the most recent positions layer `layer` attends over (None: all)."""
        return None if self.layer_windows is None else self.layer_windows[layer]

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self, *, with_lm_head: bool = True) -> int:
        d, hd = self.d_model, self.resolved_head_dim
        attn = d * hd * (self.n_heads * 2 + self.n_kv_heads * 2)
        attn += hd * (self.n_heads + 2 * self.n_kv_heads) if self.qkv_bias else 0
        layer = attn + 3 * d * self.d_ff + (4 if self.post_norms else 2) * d
        head = 0 if (self.tie_embeddings or not with_lm_head) else d * self.vocab_size
        return self.vocab_size * d + self.n_layers * layer + d + head


PRESETS: dict[str, ModelConfig] = {
    # unit tests: compiles in a second or two
    "tiny": ModelConfig(),
    # the embedded toy task (~100k parameters; the whole WARM pipeline on a 2-core CPU in minutes)
    "toy": ModelConfig(vocab_size=40, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                       max_len=64),
    # a small model for real text with the byte tokenizer
    "small": ModelConfig(vocab_size=260, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, d_ff=768,
                         max_len=512),
    # SmolLM2-135M shapes (a GGUF/safetensors import fills these)
    "smollm2-135m": ModelConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                                d_ff=1536, max_len=8192, rope_theta=100000.0, tie_embeddings=True),
    # Llama-3.2-1B shapes (~1.24B parameters), for accelerator meshes
    "1b": ModelConfig(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                      d_ff=8192, max_len=8192, rope_theta=500000.0, tie_embeddings=True,
                      dtype="bfloat16"),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"model preset {name!r} unknown: allowed {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
